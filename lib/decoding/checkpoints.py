"""Stage-2 files: trainable weights, resumable checkpoints, fingerprints, the retrieval head.

- :func:`save_weights` / :func:`load_weights`: the trainable tensors of a model as safetensors
  (``best.safetensors``: the best validation step);
- :func:`save_checkpoint` / :func:`load_checkpoint`: everything needed to resume training
  bit for bit: trainable weights, optimizer and scheduler states and the torch RNG state
  (tensors as ``checkpoint.safetensors``, the rest as ``checkpoint.json``, both atomically);
- :func:`start_fingerprint`: a hash of the starting weights and the data; with the settings'
  hash it decides whether a checkpoint may be resumed (:func:`restore_checkpoint`);
- :func:`save_heads` / :func:`load_heads`: the stage-2 retrieval head (brain projection and
  temperature).
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from pathlib import Path

import torch
from torch import nn

from lib.io import atomic_path, write_json

CHECKPOINT = "checkpoint"
BEST = "best"


def trainable_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """Host copies of the tensors of ``model.state_dict()`` that require gradients.

    Returns
    -------
    state : dict of str -> Tensor
        Contiguous CPU clones (the model's own tensors are not shared).
    """
    names = {n for n, p in model.named_parameters() if p.requires_grad}
    return {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()
            if k in names}


def save_weights(model, path: str | os.PathLike, metadata: dict | None = None) -> Path:
    """Save the trainable weights of ``model`` as safetensors, atomically.

    Parameters
    ----------
    model : torch.nn.Module
    path : path-like
    metadata : dict or None
        JSON-serialisable values, stored in the file's header as one JSON string with sorted
        keys under ``"json"`` (``json.loads(safe_open(path, "pt").metadata()["json"])``).
        safetensors writes several header entries in a random order; one entry keeps the
        file's bytes the same from run to run.

    Returns
    -------
    path : Path
    """
    from safetensors.torch import save_file

    meta = {"json": json.dumps(metadata or {}, sort_keys=True)}
    with atomic_path(path) as tmp:
        save_file(trainable_state(model), str(tmp), metadata=meta)
    return Path(path)


def load_weights(model, path: str | os.PathLike) -> None:
    """Load weights saved by :func:`save_weights` into ``model`` (missing keys are an error)."""
    from safetensors.torch import load_file

    state = load_file(str(path))
    expected = set(trainable_state(model))
    if set(state) != expected:
        raise ValueError(
            f"{path}: weights do not match the model (missing {sorted(expected - set(state))[:3]}, "
            f"unexpected {sorted(set(state) - expected)[:3]}); was it written for another run?"
        )
    model.load_state_dict(state, strict=False)


def start_fingerprint(model, train, val) -> str:
    """Hash of the starting weights and of the training and validation data.

    A checkpoint is resumed only when it began from the same point: new settings, a refitted
    stage-1 map or retrained BLIP-2 models all start a fresh run instead of resuming a stale one.
    Tensors are hashed in slices of at most 64 MiB, so that a multi-GB map is never copied whole.

    Parameters
    ----------
    model : torch.nn.Module
    train, val : lib.decoding.pairs.PairData

    Returns
    -------
    fingerprint : str
        16 hexadecimal digits.
    """
    h = hashlib.sha1()
    for name, tensor in sorted(model.state_dict().items()):
        h.update(name.encode())
        _hash_tensor(h, tensor)
    for data in (train, val):
        for tensor in (data.X, data.tokens, data.image_ids, data.pairs):
            _hash_tensor(h, tensor)
        h.update("\n".join(data.captions).encode())
    return h.hexdigest()[:16]


def _hash_tensor(h, tensor: torch.Tensor, chunk_bytes: int = 64 * 2**20) -> None:
    flat = tensor.detach().reshape(-1)
    step = max(1, chunk_bytes // max(1, flat.element_size()))
    for start in range(0, flat.numel(), step):
        part = flat[start:start + step].cpu().contiguous()
        h.update(memoryview(part.view(torch.uint8).numpy()))


def save_checkpoint(out_dir: Path, model, optimizer, scheduler, state: dict) -> None:
    """Write ``checkpoint.safetensors`` (weights, optimizer moments, RNG) and ``checkpoint.json``.

    Parameters
    ----------
    out_dir : Path
    model : torch.nn.Module
    optimizer : torch.optim.Optimizer
    scheduler : torch.optim.lr_scheduler.LambdaLR
    state : dict
        The training state (``step``, ``history``, ...), JSON-serialisable; written with the
        optimizer's parameter groups and the scheduler's state added.
    """
    from safetensors.torch import save_file

    tensors = {f"model.{k}": v for k, v in trainable_state(model).items()}
    opt = optimizer.state_dict()
    for pid, st in opt["state"].items():
        for key, value in st.items():
            tensor = torch.as_tensor(value).detach().cpu()
            tensors[f"optim.{pid}.{key}"] = tensor.contiguous().clone()
    tensors["rng.torch"] = torch.get_rng_state().clone()
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng.cuda.{i}"] = s.clone()
    groups = [{k: (list(v) if isinstance(v, tuple) else v) for k, v in g.items()}
              for g in opt["param_groups"]]
    sched = {k: v for k, v in scheduler.state_dict().items() if k != "lr_lambdas"}
    meta = dict(state, param_groups=groups, scheduler=sched)
    with atomic_path(out_dir / f"{CHECKPOINT}.safetensors") as tmp:
        save_file(tensors, str(tmp), metadata={"step": str(meta["step"])})
    write_json(out_dir / f"{CHECKPOINT}.json", meta)


def load_checkpoint(out_dir: Path, model, optimizer, scheduler) -> dict:
    """Restore what :func:`save_checkpoint` wrote into the model, optimizer, scheduler and RNG.

    Returns
    -------
    state : dict
        The training state as saved (with ``param_groups`` and ``scheduler``).
    """
    from safetensors import safe_open
    from safetensors.torch import load_file

    meta = json.loads((out_dir / f"{CHECKPOINT}.json").read_text())
    path = out_dir / f"{CHECKPOINT}.safetensors"
    with safe_open(str(path), framework="pt") as f:
        step = int(f.metadata()["step"])
    if step != meta["step"]:
        raise RuntimeError(
            f"{path} (step {step}) and {CHECKPOINT}.json (step {meta['step']}) disagree; the "
            "checkpoint is inconsistent: delete both files to restart training from scratch."
        )
    tensors = load_file(str(path))
    model.load_state_dict(
        {k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")}, strict=False
    )
    state: dict[int, dict] = {}
    for key, value in tensors.items():
        if key.startswith("optim."):
            _, pid, name = key.split(".", 2)
            state.setdefault(int(pid), {})[name] = value
    groups = [dict(g, betas=tuple(g["betas"])) for g in meta["param_groups"]]
    optimizer.load_state_dict({"state": state, "param_groups": groups})
    scheduler.load_state_dict(dict(meta["scheduler"], lr_lambdas=[None] * len(groups)))
    torch.set_rng_state(tensors["rng.torch"])
    if torch.cuda.is_available():
        cuda = [tensors[f"rng.cuda.{i}"] for i in range(torch.cuda.device_count())
                if f"rng.cuda.{i}" in tensors]
        if cuda:
            torch.cuda.set_rng_state_all(cuda)
    return meta


def restore_checkpoint(out_dir: Path, fingerprint: str, resume: bool, model, optimizer,
                       scheduler) -> dict | None:
    """Resume from ``out_dir``'s checkpoint when it has ``fingerprint``, else delete it.

    A checkpoint of other settings, starting weights or data is discarded with a warning.

    Returns
    -------
    state : dict or None
        The restored training state (:func:`load_checkpoint`), or None when training starts
        from scratch.
    """
    ckpt = out_dir / f"{CHECKPOINT}.json"
    stale = resume and ckpt.exists() and (
        json.loads(ckpt.read_text()).get("fingerprint") != fingerprint)
    if stale:
        warnings.warn(
            f"{ckpt} was written with other training settings, starting weights or data: "
            "it is discarded and training starts from scratch.", stacklevel=4)
    if resume and ckpt.exists() and not stale:
        return load_checkpoint(out_dir, model, optimizer, scheduler)
    for name in (f"{CHECKPOINT}.json", f"{CHECKPOINT}.safetensors"):
        (out_dir / name).unlink(missing_ok=True)
    return None


def save_heads(model, path: str | os.PathLike) -> None:
    """Save the brain projection and temperature (the stage-2 retrieval head) as safetensors.

    Parameters
    ----------
    model : lib.decoding.contrastive.BrainTextContrastive
    path : path-like
    """
    from safetensors.torch import save_file

    state = {f"brain_projection.{k}": v.detach().cpu().contiguous()
             for k, v in model.brain_projection.state_dict().items()}
    state["temp"] = model.temp.detach().cpu().reshape(())
    with atomic_path(path) as tmp:
        save_file(state, str(tmp))


def load_heads(path: str | os.PathLike) -> tuple[nn.Linear, float]:
    """Read :func:`save_heads`' file.

    Returns
    -------
    projection : torch.nn.Linear
        The brain projection, (hidden) -> (dim), in eval mode.
    temperature : float
        The learnt temperature (before clamping).
    """
    from safetensors.torch import load_file

    state = load_file(str(path))
    w = state["brain_projection.weight"]
    proj = nn.Linear(w.shape[1], w.shape[0])
    proj.load_state_dict({"weight": w, "bias": state["brain_projection.bias"]})
    return proj.eval(), float(state["temp"])
