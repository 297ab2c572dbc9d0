"""Training loop for stage 2 (contrastive fine-tuning), resumable bit for bit.

One call, :func:`fit`, trains a :class:`lib.decoding.contrastive.BrainTextContrastive` on
(brain sample, caption) pairs: AdamW (the brain map at a lower rate), a cosine schedule with
linear warm-up, gradient clipping, gradient accumulation, bf16 autocast on CUDA, validation on
images carved from the *training* set, early stopping, the best weights kept as safetensors.

Resuming. Every ``checkpoint_every`` optimizer steps the trainable weights, the optimizer and
scheduler states and the torch RNG state are written (tensors as ``checkpoint.safetensors``, the
rest as ``checkpoint.json``, both atomically). The batches of an epoch are a permutation drawn
from ``(seed, epoch)`` alone, so a run killed at any point and restarted with the same arguments
replays exactly the remaining steps: on CPU its final weights equal those of an uninterrupted
run bit for bit (tested).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from lib.config import show_progress
from lib.decoding.stage1 import LeakageError, assert_no_test_ids
from lib.io import atomic_path, write_json

CHECKPOINT = "checkpoint"
BEST = "best"


def split_train_val(image_ids, val_fraction: float = 0.1, seed: int = 0):
    """Carve a validation set out of the training images (whole images, never trials).

    Parameters
    ----------
    image_ids : array-like of int
        Unique training image ids.
    val_fraction : float
        Share of images held out for validation (at least one image is held out and one kept).
    seed : int

    Returns
    -------
    train_ids, val_ids : ndarray of int
        Sorted, disjoint.
    """
    ids = np.unique(np.asarray(image_ids))
    if ids.size < 2:
        raise ValueError("need at least two training images to carve out a validation set")
    n_val = min(max(1, round(val_fraction * ids.size)), ids.size - 1)
    perm = np.random.default_rng(seed).permutation(ids.size)
    val = np.sort(ids[perm[:n_val]])
    train = np.sort(ids[perm[n_val:]])
    return train, val


# ----------------------------------------------------------------------------- data


@dataclass
class PairData:
    """(brain sample, caption) pairs for contrastive training.

    Attributes
    ----------
    X : Tensor of shape (n_samples, n_features), float32
        Brain samples (repetition-averaged betas, or single trials with memory windows).
    tokens : Tensor of shape (n_samples, n_query, hidden), float32
        True Q-Former outputs of each sample's image.
    image_ids : LongTensor of shape (n_samples,)
        NSD id of each sample's image.
    pairs : LongTensor of shape (n_pairs, 2)
        ``(sample index, caption index)``: every caption of the sample's image.
    captions : list of str, length n_captions
    text_feats : Tensor of shape (n_captions, dim) or None
        Precomputed normalised caption embeddings (frozen text side).
    """

    X: torch.Tensor
    tokens: torch.Tensor
    image_ids: torch.Tensor
    pairs: torch.Tensor
    captions: list
    text_feats: torch.Tensor | None = None

    @classmethod
    def build(cls, X, tokens, image_ids, captions_by_image: dict) -> PairData:
        """Pair every sample with every caption of its image.

        Parameters
        ----------
        X : ndarray of shape (n_samples, n_features)
        tokens : ndarray of shape (n_samples, n_query, hidden)
        image_ids : ndarray of shape (n_samples,)
        captions_by_image : dict
            nsd id (int) -> list of captions.
        """
        image_ids = np.asarray(image_ids, dtype=np.int64)
        if not (len(X) == len(tokens) == len(image_ids)):
            raise ValueError(
                f"X, tokens and image_ids must have the same length; got {len(X)}, "
                f"{len(tokens)}, {len(image_ids)}"
            )
        captions: list[str] = []
        first: dict[int, tuple[int, int]] = {}
        for nsd in np.unique(image_ids):
            caps = list(captions_by_image.get(int(nsd), []))
            if not caps:
                raise ValueError(f"image nsd_id={int(nsd)} has no caption; cannot pair it")
            first[int(nsd)] = (len(captions), len(caps))
            captions.extend(caps)
        pairs = [
            (i, start + c)
            for i, nsd in enumerate(image_ids)
            for start, n in [first[int(nsd)]]
            for c in range(n)
        ]
        return cls(
            X=torch.as_tensor(np.asarray(X, dtype=np.float32)),
            tokens=torch.as_tensor(np.asarray(tokens, dtype=np.float32)),
            image_ids=torch.as_tensor(image_ids),
            pairs=torch.as_tensor(np.asarray(pairs, dtype=np.int64)).reshape(-1, 2),
            captions=captions,
        )

    def __len__(self) -> int:
        return len(self.pairs)

    def batch(self, idx: torch.Tensor, device) -> dict:
        """Tensors of the pairs ``idx`` on ``device``."""
        s, c = self.pairs[idx, 0], self.pairs[idx, 1]
        out = {
            "X": self.X[s].to(device),
            "true_tokens": self.tokens[s].to(device),
            "image_ids": self.image_ids[s].to(device),
        }
        if self.text_feats is not None:
            out["text_feats"] = self.text_feats[c].to(device)
        else:
            out["caption_index"] = c
        return out


# ----------------------------------------------------------------------------- config


@dataclass
class TrainConfig:
    """Hyper-parameters of :func:`fit` (original study: lr 1e-4 from an LR finder, brain map
    lr/5, batch 32, accumulate 2, clip 1.0, AdamW weight decay 0.01, 10 epochs)."""

    lr: float = 1e-4
    brain_lr_factor: float = 0.2
    weight_decay: float = 0.01
    betas: tuple = (0.9, 0.999)
    batch_size: int = 32
    grad_accum: int = 2
    epochs: int = 10
    warmup_steps: int = 0
    clip_norm: float = 1.0
    eval_every: int = 50
    checkpoint_every: int = 50
    patience: int | None = None
    select_by: str = "val_loss"
    seed: int = 0
    amp: bool = True
    max_length: int = 64

    def fingerprint(self) -> str:
        """Hash of the settings that change the trajectory (a checkpoint must match it)."""
        keys = {k: v for k, v in asdict(self).items() if k not in ("eval_every",)}
        return hashlib.sha1(json.dumps(keys, sort_keys=True, default=list).encode()).hexdigest()


def _start_fingerprint(model, train: PairData, val: PairData) -> str:
    """Hash of the starting weights and of the training and validation data.

    A checkpoint is resumed only when it began from the same point: new settings, a refitted
    stage-1 map or retrained BLIP-2 models all start a fresh run instead of resuming a stale one.
    Tensors are hashed in slices of at most 64 MiB, so that a multi-GB map is never copied whole.
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


def make_optimizer(model, config: TrainConfig, device) -> torch.optim.AdamW:
    """AdamW over ``model.param_groups`` (empty groups dropped); fused on CUDA, so that a step
    allocates no parameter-sized temporaries (:mod:`lib.decoding.memory` counts its state)."""
    groups = [g for g in model.param_groups(config.lr, config.brain_lr_factor) if g["params"]]
    return torch.optim.AdamW(
        groups, lr=config.lr, betas=tuple(config.betas), weight_decay=config.weight_decay,
        fused=torch.device(device).type == "cuda" or None)


def cosine_with_warmup(warmup_steps: int, total_steps: int) -> Callable[[int], float]:
    """LR multiplier: linear warm-up to 1, then cosine decay to 0 at ``total_steps``."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / max(1, warmup_steps)
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return factor


# ----------------------------------------------------------------------------- state I/O


def _trainable_state(model) -> dict[str, torch.Tensor]:
    names = {n for n, p in model.named_parameters() if p.requires_grad}
    return {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()
            if k in names}


def save_weights(model, path: str | os.PathLike, metadata: dict | None = None) -> Path:
    """Save the trainable weights of ``model`` as safetensors, atomically."""
    from safetensors.torch import save_file

    meta = {k: json.dumps(v) for k, v in (metadata or {}).items()}
    with atomic_path(path) as tmp:
        save_file(_trainable_state(model), str(tmp), metadata=meta)
    return Path(path)


def load_weights(model, path: str | os.PathLike) -> None:
    """Load weights saved by :func:`save_weights` into ``model`` (missing keys are an error)."""
    from safetensors.torch import load_file

    state = load_file(str(path))
    expected = set(_trainable_state(model))
    if set(state) != expected:
        raise ValueError(
            f"{path}: weights do not match the model (missing {sorted(expected - set(state))[:3]}, "
            f"unexpected {sorted(set(state) - expected)[:3]}); was it written for another run?"
        )
    model.load_state_dict(state, strict=False)


def _save_checkpoint(out_dir: Path, model, optimizer, scheduler, meta: dict) -> None:
    from safetensors.torch import save_file

    tensors = {f"model.{k}": v for k, v in _trainable_state(model).items()}
    opt = optimizer.state_dict()
    for pid, st in opt["state"].items():
        for key, value in st.items():
            tensors[f"optim.{pid}.{key}"] = (
                torch.as_tensor(value).detach().cpu().contiguous().clone())
    tensors["rng.torch"] = torch.get_rng_state().clone()
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng.cuda.{i}"] = s.clone()
    groups = [{k: (list(v) if isinstance(v, tuple) else v) for k, v in g.items()}
              for g in opt["param_groups"]]
    sched = {k: v for k, v in scheduler.state_dict().items() if k != "lr_lambdas"}
    meta = dict(meta, param_groups=groups, scheduler=sched)
    with atomic_path(out_dir / f"{CHECKPOINT}.safetensors") as tmp:
        save_file(tensors, str(tmp), metadata={"step": str(meta["step"])})
    write_json(out_dir / f"{CHECKPOINT}.json", meta)


def _load_checkpoint(out_dir: Path, model, optimizer, scheduler) -> dict:
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


# ----------------------------------------------------------------------------- evaluation


@torch.no_grad()
def evaluate(model, data: PairData, batch_size: int = 32, device="cpu", tokenizer=None,
             max_length: int = 64, seed: int = 0) -> dict:
    """Validation losses over all pairs and brain->text top-1 among the validation images.

    The pairs are visited in a fixed random order (``seed``) and in batches of ``batch_size``,
    like training batches, so that the contrastive loss (which depends on the batch size and on
    how many same-image pairs share a batch) is on the training scale.

    Retrieval (:func:`lib.metrics.retrieval_from_similarity`, strict ties): one brain sample
    (not averaged over repeats) and one caption (its first) per image, candidates = all
    validation images in one draw (chance = 1 / n_images); similarity = max over query tokens
    of the cosine (BLIP-2 ITC).

    Returns
    -------
    metrics : dict
        ``loss``, ``mse``, ``contrastive``, ``brain_text``, ``top1`` (brain->text), ``chance``.
    """
    from lib.decoding.contrastive import itc_similarity
    from lib.metrics import retrieval_from_similarity

    was_training = model.training
    model.eval()
    sums = {"loss": 0.0, "mse": 0.0, "contrastive": 0.0, "brain_text": 0.0}
    n = len(data)
    # the map's prediction once per brain sample (each sample has several captions)
    samples = torch.unique(data.pairs[:, 0])
    row = torch.full((len(data.X),), -1, dtype=torch.long)
    row[samples] = torch.arange(len(samples))
    preds = torch.cat([model.predict_tokens(data.X[samples[i:i + 256]].to(device))
                       for i in range(0, len(samples), 256)]) if len(samples) else None
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    for start in range(0, n, batch_size):
        idx = order[start:start + batch_size]
        pred = preds[row[data.pairs[idx, 0]].to(preds.device)]
        out = _forward(model, data, idx, device, tokenizer, max_length, pred=pred)
        w = len(idx) / n
        for k in sums:
            sums[k] += w * float(getattr(out, k).detach())
    # retrieval: one sample + first caption per image
    ids = data.image_ids.numpy()
    uniq, first_sample = np.unique(ids, return_index=True)
    first_caption = {}
    for s, c in data.pairs.numpy():
        first_caption.setdefault(int(ids[s]), int(c))
    X = data.X[torch.as_tensor(first_sample)].to(device)
    brain = model.brain_features(model.predict_tokens(X).float())
    cidx = torch.as_tensor([first_caption[int(u)] for u in uniq])
    text = _text_feats(model, data, cidx, device, tokenizer, max_length)
    sim = itc_similarity(brain.float(), text.float()).cpu().numpy()
    ret = retrieval_from_similarity(sim, k=len(uniq), n_draws=1, seed=seed,
                                    repeat_averaged=False,
                                    directions=("brain_to_text", "text_to_brain"))
    sums.update(top1=ret["brain_to_text"]["mean"], chance=ret["chance"])
    model.train(was_training)
    return sums


def _text_feats(model, data: PairData, cidx, device, tokenizer, max_length):
    if data.text_feats is not None:
        return data.text_feats[cidx].to(device)
    from lib.decoding.contrastive import tokenize_captions

    ids, mask = tokenize_captions(tokenizer, [data.captions[int(i)] for i in cidx], max_length)
    return model.text_features(ids.to(device), mask.to(device))


def _forward(model, data: PairData, idx, device, tokenizer, max_length, pred=None):
    batch = data.batch(idx, device)
    if pred is not None:
        batch["pred"] = pred
    if "caption_index" in batch:
        from lib.decoding.contrastive import tokenize_captions

        cidx = batch.pop("caption_index")
        ids, mask = tokenize_captions(tokenizer, [data.captions[int(i)] for i in cidx], max_length)
        batch["input_ids"], batch["attention_mask"] = ids.to(device), mask.to(device)
    return model(**batch)


# ----------------------------------------------------------------------------- fit


@dataclass
class TrainResult:
    """What :func:`fit` returns: the loss history and where the best weights are."""

    history: list = field(default_factory=list)
    best_step: int = -1
    best_value: float = float("nan")
    best_path: Path | None = None
    steps: int = 0
    wall_time_s: float = 0.0
    resumed_from: int | None = None


def fit(
    model,
    train: PairData,
    val: PairData,
    config: TrainConfig,
    out_dir: str | os.PathLike,
    test_ids: Sequence[int] | None = None,
    device: str | torch.device = "cpu",
    tokenizer=None,
    resume: bool = True,
    callback: Callable[[int, dict], None] | None = None,
    progress: bool = True,
) -> TrainResult:
    """Train ``model`` on ``train`` pairs, validating on ``val``; resumable.

    Parameters
    ----------
    model : BrainTextContrastive
    train, val : PairData
        Training pairs and validation pairs; their images must be disjoint from each other and
        from ``test_ids`` (checked: :class:`LeakageError`).
    config : TrainConfig
    out_dir : path-like
        Receives ``checkpoint.safetensors`` + ``checkpoint.json`` (for resuming),
        ``best.safetensors`` (trainable weights of the best validation step) and
        ``history.json``.
    test_ids : sequence of int
        The test images; required, so that leakage is always checked.
    device : str or torch.device
    tokenizer : tokenizer, optional
        Needed only when caption embeddings are not precomputed (``train_itm=True``).
    resume : bool
        Continue from ``out_dir``'s checkpoint when there is one (its settings must match).
    callback : callable, optional
        ``callback(step, record)`` after every optimizer step (``record`` holds the losses);
        raising from it stops training (used by the tests to simulate a kill).
    progress : bool

    Returns
    -------
    result : TrainResult
        At return the model holds the **final** weights; load ``result.best_path`` for the best.
    """
    if test_ids is None:
        raise ValueError("fit needs test_ids to check that no test image is used in training")
    assert_no_test_ids(train.image_ids.numpy(), test_ids, "the training pairs")
    assert_no_test_ids(val.image_ids.numpy(), test_ids, "the validation (early-stopping) pairs")
    overlap = np.intersect1d(train.image_ids.numpy(), val.image_ids.numpy())
    if overlap.size:
        raise LeakageError(f"{overlap.size} image(s) are in both training and validation pairs")
    if config.select_by not in ("val_loss", "val_top1"):
        raise ValueError(f"select_by={config.select_by!r}; expected 'val_loss' or 'val_top1'")

    device = torch.device(device)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.to(device)
    n_micro = math.ceil(len(train) / config.batch_size)
    steps_per_epoch = math.ceil(n_micro / config.grad_accum)
    total = steps_per_epoch * config.epochs

    optimizer = make_optimizer(model, config, device)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, cosine_with_warmup(config.warmup_steps, total)
    )
    use_amp = bool(config.amp) and device.type == "cuda"

    fingerprint = f"{config.fingerprint()}-{_start_fingerprint(model, train, val)}"
    meta = {"step": 0, "fingerprint": fingerprint, "history": [], "best_value": None,
            "best_step": -1, "bad_evals": 0, "stopped": False}
    result = TrainResult()
    ckpt = out_dir / f"{CHECKPOINT}.json"
    stale = resume and ckpt.exists() and (
        json.loads(ckpt.read_text()).get("fingerprint") != meta["fingerprint"])
    if stale:
        warnings.warn(
            f"{ckpt} was written with other training settings, starting weights or data: "
            "it is discarded and training starts from scratch.", stacklevel=2)
    if resume and ckpt.exists() and not stale:
        meta = _load_checkpoint(out_dir, model, optimizer, scheduler)
        result.resumed_from = meta["step"]
    else:
        for name in (f"{CHECKPOINT}.json", f"{CHECKPOINT}.safetensors"):
            (out_dir / name).unlink(missing_ok=True)

    def better(value, best):
        if best is None:
            return True
        return value < best if config.select_by == "val_loss" else value > best

    def run_eval(step):
        metrics = evaluate(model, val, batch_size=config.batch_size, device=device,
                           tokenizer=tokenizer, max_length=config.max_length, seed=config.seed)
        value = metrics["loss"] if config.select_by == "val_loss" else metrics["top1"]
        rec = {"step": step, "split": "val", **metrics}
        meta["history"].append(rec)
        if better(value, meta["best_value"]):
            meta.update(best_value=value, best_step=step, bad_evals=0)
            save_weights(model, out_dir / f"{BEST}.safetensors", {"step": step, **metrics})
        else:
            meta["bad_evals"] += 1
            if config.patience is not None and meta["bad_evals"] >= config.patience:
                meta["stopped"] = True
        return rec

    t0 = time.perf_counter()
    if meta["step"] == 0 and not meta["history"]:
        run_eval(0)
    model.train()
    bar = tqdm(total=total, initial=meta["step"], desc="stage 2",
               disable=not show_progress(progress))
    while meta["step"] < total and not meta["stopped"]:
        step = meta["step"]
        epoch, s = divmod(step, steps_per_epoch)
        perm = torch.randperm(len(train), generator=torch.Generator().manual_seed(
            config.seed * 1_000_003 + epoch))
        micro = range(s * config.grad_accum, min((s + 1) * config.grad_accum, n_micro))
        optimizer.zero_grad(set_to_none=True)
        logs = {"loss": 0.0, "mse": 0.0, "contrastive": 0.0, "brain_text": 0.0}
        for m in micro:
            idx = perm[m * config.batch_size:(m + 1) * config.batch_size]
            with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=use_amp):
                out = _forward(model, train, idx, device, tokenizer, config.max_length)
            (out.loss / len(micro)).backward()
            for k in logs:
                logs[k] += float(getattr(out, k).detach()) / len(micro)
        grad_norm = torch.nn.utils.clip_grad_norm_(
            [p for g in optimizer.param_groups for p in g["params"]], config.clip_norm)
        optimizer.step()
        scheduler.step()
        meta["step"] = step + 1
        rec = {"step": step + 1, "split": "train", "epoch": epoch, **logs,
               "grad_norm": float(grad_norm), "lr": scheduler.get_last_lr()[0],
               "temperature": float(model.temperature.detach())}
        meta["history"].append(rec)
        bar.update(1)
        bar.set_postfix(loss=f"{logs['loss']:.4f}")
        if (step + 1) % config.eval_every == 0 or step + 1 == total:
            model.eval()
            run_eval(step + 1)
            model.train()
        if (step + 1) % config.checkpoint_every == 0 or step + 1 == total or meta["stopped"]:
            _save_checkpoint(out_dir, model, optimizer, scheduler, meta)
        if callback is not None:
            callback(step + 1, rec)
    bar.close()
    optimizer.zero_grad(set_to_none=True)  # the gradients of the last step are not kept
    del optimizer
    model.eval()
    write_json(out_dir / "history.json", meta["history"])
    result.history = meta["history"]
    result.best_step = meta["best_step"]
    result.best_value = meta["best_value"]
    result.best_path = out_dir / f"{BEST}.safetensors"
    result.steps = meta["step"]
    result.wall_time_s = time.perf_counter() - t0
    return result


@torch.no_grad()
def predict_tokens(model, X, batch_size: int = 256, device="cpu") -> np.ndarray:
    """Query tokens predicted by the (trained) brain map.

    Parameters
    ----------
    model : BrainTextContrastive or the brain map itself
    X : ndarray of shape (n, n_features)

    Returns
    -------
    pred : ndarray of shape (n, n_query, hidden), float32
    """
    fn = model.predict_tokens if hasattr(model, "predict_tokens") else model
    was = model.training
    model.eval()
    out = []
    for start in range(0, len(X), batch_size):
        x = torch.as_tensor(np.asarray(X[start:start + batch_size], dtype=np.float32)).to(device)
        out.append(fn(x).float().cpu().numpy())
    model.train(was)
    return np.concatenate(out) if out else np.zeros((0,), np.float32)


# ----------------------------------------------------------------------------- stage glue


@dataclass
class Stage2Data:
    """Everything stage 2 trains and predicts on, with the splits checked.

    Attributes
    ----------
    train, val : PairData
        Pairs of the training images and of the validation images carved from them.
    X_test : ndarray of shape (n_test_samples, n_features)
        Test brain samples (memory blocks side by side), for prediction only.
    test_sample_ids : ndarray of shape (n_test_samples,)
    X_train : ndarray of shape (n_train_samples, n_features)
        All training samples (train + validation images), for in-sample predictions.
    train_sample_ids : ndarray of shape (n_train_samples,)
    test_ids : ndarray
        The subject's test images (never used above except for prediction).
    val_ids : ndarray
        The validation images.
    """

    train: PairData
    val: PairData
    X_test: np.ndarray
    test_sample_ids: np.ndarray
    X_train: np.ndarray
    train_sample_ids: np.ndarray
    test_ids: np.ndarray
    val_ids: np.ndarray


def stage2_data(subject, features, feature_ids, memory_size: int = 1,
                memory_direction: str = "past", roi: str | None = None,
                val_fraction: float = 0.1, seed: int = 0) -> Stage2Data:
    """Brain samples, true query tokens and captions for stage 2, split by image.

    The inputs are built exactly as stage 1 builds them
    (:func:`lib.decoding.stage1.stage1_inputs`: averaged betas for ``memory_size=1``, single
    trials with their memory window otherwise); validation images are drawn from the training
    images (:func:`split_train_val`); no test image enters ``train`` or ``val`` (asserted).

    Parameters
    ----------
    subject : lib.nsd.PreparedSubject
    features : ndarray of shape (n_images, n_query, hidden)
    feature_ids : ndarray of shape (n_images,)
    memory_size, memory_direction, roi
        As for stage 1 (must match the stage-1 decoder that is fine-tuned).
    val_fraction : float
    seed : int

    Returns
    -------
    data : Stage2Data
    """
    from lib.decoding.stage1 import lookup_features, stage1_inputs

    test_ids = np.asarray(subject.image_ids("test"))
    blocks, ids = stage1_inputs(subject, "train", memory_size, memory_direction, roi)
    assert_no_test_ids(ids, test_ids, "the stage-2 training samples")
    tr_img, val_img = split_train_val(np.unique(ids), val_fraction, seed)
    # training samples first, validation samples after: both parts are views of one array
    order = np.argsort(~np.isin(ids, tr_img), kind="stable")
    n_tr = int(np.isin(ids, tr_img).sum())
    X, ids = _stack_blocks(blocks, order), ids[order]
    del blocks
    tokens = lookup_features(np.asarray(features, np.float32), np.asarray(feature_ids), ids)
    caps = dict(zip((int(i) for i in np.unique(ids)), subject.captions(np.unique(ids))))
    parts = [PairData.build(X[sl], tokens[sl], ids[sl], caps)
             for sl in (slice(0, n_tr), slice(n_tr, None))]
    tblocks, tids = stage1_inputs(subject, "test", memory_size, memory_direction, roi)
    X_test = _stack_blocks(tblocks)
    return Stage2Data(parts[0], parts[1], X_test, np.asarray(tids), X, np.asarray(ids),
                      test_ids, val_img)


def _stack_blocks(blocks: list, order=None) -> np.ndarray:
    """Memory blocks side by side in one float32 array (rows in ``order``), releasing each
    block once copied: the peak is the result plus one block, not twice the result.

    Parameters
    ----------
    blocks : list of ndarray of shape (n, p_b)
        Emptied by this call.
    order : ndarray of shape (n,) or None

    Returns
    -------
    X : ndarray of shape (n, sum p_b), float32
    """
    n = len(blocks[0])
    X = np.empty((n, sum(b.shape[1] for b in blocks)), np.float32)
    start = 0
    while blocks:
        b = blocks.pop(0)
        X[:, start:start + b.shape[1]] = b if order is None else b[order]
        start += b.shape[1]
        del b
    return X


def save_stage2(model, data: Stage2Data, run_dir: str | os.PathLike, settings: dict,
                device="cpu") -> Path:
    """Write a stage-2 run: decoder (stage-1 format), retrieval head, predictions.

    Files in ``run_dir``: ``decoder.safetensors`` + ``settings.json`` (the fine-tuned brain
    map, loadable with :func:`lib.decoding.stage1.load_decoder`), ``heads.safetensors``
    (brain projection + temperature) and ``predictions.h5`` (test and training predictions,
    averaged over an image's repetitions).
    """
    from lib.decoding.contrastive import save_heads
    from lib.decoding.stage1 import PREDICTIONS_FILE, average_by_id, write_predictions

    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    decoder = model.merged_map()
    decoder.settings = {**getattr(decoder, "settings", {}), **settings}
    decoder.save(run_dir)
    save_heads(model, run_dir / "heads.safetensors")
    test_pred, test_ids = average_by_id(
        predict_tokens(model, data.X_test, device=device), data.test_sample_ids)
    train_pred, train_ids = average_by_id(
        predict_tokens(model, data.X_train, device=device), data.train_sample_ids)
    write_predictions(run_dir / PREDICTIONS_FILE, test_pred, test_ids, train_pred, train_ids)
    return run_dir


def loss_curves(history: Sequence[dict]):
    """Plotly figure of the training and validation losses (total, MSE, contrastive).

    Parameters
    ----------
    history : list of dict
        :attr:`TrainResult.history` (records with ``step``, ``split`` and the losses).

    Returns
    -------
    fig : plotly.graph_objects.Figure
    """
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    parts = [("loss", "total loss"), ("mse", "MSE to true query tokens"),
             ("contrastive", "contrastive (brain-text, image-text)")]
    fig = make_subplots(rows=1, cols=3, subplot_titles=[t for _, t in parts])
    colors = {"train": "#1f77b4", "val": "#d62728"}
    for col, (key, _) in enumerate(parts, start=1):
        for split in ("train", "val"):
            recs = [h for h in history if h["split"] == split]
            fig.add_trace(go.Scatter(
                x=[h["step"] for h in recs], y=[h[key] for h in recs], name=split,
                mode="lines" if split == "train" else "lines+markers",
                line={"color": colors[split], "width": 1 if split == "train" else 2},
                legendgroup=split, showlegend=col == 1), row=1, col=col)
        fig.update_xaxes(title_text="optimizer step", row=1, col=col)
    fig.update_layout(height=330, width=1000, margin={"t": 40, "b": 40})
    return fig
