"""Training loop for stage 2 (contrastive fine-tuning), resumable bit for bit.

:func:`fit` trains a :class:`lib.decoding.contrastive.BrainTextContrastive` on (brain sample,
caption) pairs (:class:`lib.decoding.pairs.PairData`): AdamW (the brain map at a lower rate,
:func:`make_optimizer`), a cosine schedule with linear warm-up (:func:`cosine_with_warmup`),
gradient clipping, gradient accumulation, bf16 autocast on CUDA, validation on images carved
from the *training* set (:func:`evaluate`), early stopping, the best weights kept as
safetensors.

Resuming. Every ``checkpoint_every`` optimizer steps the training state is written
(:func:`lib.decoding.checkpoints.save_checkpoint`). The batches of an epoch are a permutation
drawn from ``(seed, epoch)`` alone, so a run killed at any point and restarted with the same
arguments replays exactly the remaining steps: on CPU its final weights equal those of an
uninterrupted run bit for bit (``tests/test_contrastive.py``).

The loop is written as small functions over two explicit objects: :class:`_Run` (what does not
change during training: model, data, settings, optimizer) and the *state* dict (step, history,
best value, early-stopping counter), the only thing that changes and what a checkpoint saves.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from lib.config import show_progress
from lib.decoding.checkpoints import (
    BEST,
    restore_checkpoint,
    save_checkpoint,
    save_weights,
    start_fingerprint,
)
from lib.decoding.itm import itc_similarity, tokenize_captions
from lib.decoding.pairs import PairData, check_split
from lib.decoding.train_config import TrainConfig
from lib.io import write_json

#: Losses logged for every training step and validation.
LOSSES = ("loss", "mse", "contrastive", "brain_text")


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
    stopped_early: bool = False


def make_optimizer(model, config: TrainConfig, device) -> torch.optim.AdamW:
    """AdamW over ``model.param_groups`` (empty groups dropped); fused on CUDA, so that a step
    allocates no parameter-sized temporaries (:mod:`lib.decoding.memory` counts its state).

    Parameters
    ----------
    model : BrainTextContrastive
    config : TrainConfig
        ``lr``, ``brain_lr_factor``, ``betas``, ``weight_decay``.
    device : str or torch.device
    """
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


# ----------------------------------------------------------------------------- forward passes


def _text_feats(model, data: PairData, cidx, device, tokenizer, max_length):
    if data.text_feats is not None:
        return data.text_feats[cidx].to(device)
    ids, mask = tokenize_captions(tokenizer, [data.captions[int(i)] for i in cidx], max_length)
    return model.text_features(ids.to(device), mask.to(device))


def _forward(model, data: PairData, idx, device, tokenizer, max_length, pred=None):
    batch = data.batch(idx, device)
    if pred is not None:
        batch["pred"] = pred
    if "caption_index" in batch:
        cidx = batch.pop("caption_index")
        ids, mask = tokenize_captions(tokenizer, [data.captions[int(i)] for i in cidx], max_length)
        batch["input_ids"], batch["attention_mask"] = ids.to(device), mask.to(device)
    return model(**batch)


@torch.no_grad()
def evaluate(model, data: PairData, batch_size: int = 32, device="cpu", tokenizer=None,
             max_length: int = 64, seed: int = 0) -> dict:
    """Validation losses over all pairs and brain->text top-1 among the validation images.

    The pairs are visited in a fixed random order (``seed``) and in batches of ``batch_size``,
    like training batches, so that the contrastive loss (which depends on the batch size and on
    how many same-image pairs share a batch) is on the training scale. The brain map's
    prediction is computed once per brain sample (each sample has several captions).

    Parameters
    ----------
    model : BrainTextContrastive
    data : PairData
        The validation pairs (n_pairs).
    batch_size : int
    device : str or torch.device
    tokenizer : tokenizer, optional
        Needed only when ``data.text_feats`` is None.
    max_length : int
        Caption tokens, when captions are tokenised here.
    seed : int
        Order of the pairs and the retrieval draw.

    Returns
    -------
    metrics : dict
        ``loss``, ``mse``, ``contrastive``, ``brain_text`` (means over pairs), and ``top1``
        (brain->text) and ``chance`` of :func:`_val_retrieval`.
    """
    was_training = model.training
    model.eval()
    sums = dict.fromkeys(LOSSES, 0.0)
    n = len(data)
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
    sums.update(_val_retrieval(model, data, device, tokenizer, max_length, seed))
    model.train(was_training)
    return sums


def _val_retrieval(model, data: PairData, device, tokenizer, max_length, seed) -> dict:
    """Brain->text top-1 among the validation images (:func:`lib.metrics.retrieval_from_similarity`,
    strict ties): one brain sample (not averaged over repeats) and one caption (its first) per
    image, candidates = all images in one draw (chance = 1 / n_images); similarity = max over
    query tokens of the cosine (BLIP-2 ITC). Returns ``top1`` and ``chance``."""
    from lib.metrics import retrieval_from_similarity

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
    return {"top1": ret["brain_to_text"]["mean"], "chance": ret["chance"]}


# ----------------------------------------------------------------------------- fit


@dataclass
class _Run:
    """What stays fixed during :func:`fit` (the mutable part is the ``state`` dict)."""

    model: torch.nn.Module
    train: PairData
    val: PairData
    config: TrainConfig
    out_dir: Path
    device: torch.device
    tokenizer: object
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    n_micro: int
    steps_per_epoch: int

    @property
    def total(self) -> int:
        return self.steps_per_epoch * self.config.epochs


def fit(model, data, config: TrainConfig, out_dir: str | os.PathLike, *, tokenizer=None,
        resume: bool = True, callback: Callable[[int, dict], None] | None = None,
        progress: bool = True) -> TrainResult:
    """Train ``model`` on ``data.train`` pairs, validating on ``data.val``; resumable.

    Parameters
    ----------
    model : BrainTextContrastive
        Trained where it is (its device); move it first (``model.to(device)``).
    data : Stage2Data, or any object with ``train``, ``val`` (PairData) and ``test_ids``
        The images of the three parts must be disjoint (:func:`lib.decoding.pairs.check_split`;
        ``test_ids`` is required, so that leakage is always checked).
    config : TrainConfig
    out_dir : path-like
        Receives ``checkpoint.safetensors`` + ``checkpoint.json`` (for resuming),
        ``best.safetensors`` (trainable weights of the best validation step), ``history.json``.
    tokenizer : tokenizer, optional
        Needed only when caption embeddings are not precomputed (``train_itm=True``).
    resume : bool
        Continue from ``out_dir``'s checkpoint when there is one (its settings must match).
    callback : callable, optional
        ``callback(step, record)`` after every optimizer step (``record`` holds the losses);
        raising from it stops training (the tests simulate a kill this way).
    progress : bool

    Returns
    -------
    result : TrainResult
        At return the model holds the **final** weights; load ``result.best_path`` for the best.
    """
    run = _start(model, data, config, Path(out_dir), tokenizer)
    state, resumed_from = _initial_state(run, resume)
    t0 = time.perf_counter()
    if state["step"] == 0 and not state["history"]:
        _validate(run, state, 0)
    model.train()
    bar = tqdm(total=run.total, initial=state["step"], desc="stage 2",
               disable=not show_progress(progress))
    while state["step"] < run.total and not state["stopped"]:
        rec = _train_step(run, state)
        bar.update(1)
        bar.set_postfix(loss=f"{rec['loss']:.4f}")
        _after_step(run, state)
        if callback is not None:
            callback(state["step"], rec)
    bar.close()
    run.optimizer.zero_grad(set_to_none=True)  # the gradients of the last step are not kept
    model.eval()
    write_json(run.out_dir / "history.json", state["history"])
    return TrainResult(history=state["history"], best_step=state["best_step"],
                       best_value=state["best_value"],
                       best_path=run.out_dir / f"{BEST}.safetensors",
                       steps=state["step"], wall_time_s=time.perf_counter() - t0,
                       resumed_from=resumed_from, stopped_early=state["stopped"])


def _start(model, data, config: TrainConfig, out_dir: Path, tokenizer) -> _Run:
    """Check the split and the settings; optimizer, schedule and the steps per epoch."""
    if getattr(data, "test_ids", None) is None:
        raise ValueError("fit needs data.test_ids to check that no test image is used in "
                         "training")
    train, val = data.train, data.val
    check_split(train.image_ids.numpy(), val.image_ids.numpy(), data.test_ids)
    if config.select_by not in ("val_loss", "val_top1"):
        raise ValueError(f"select_by={config.select_by!r}; expected 'val_loss' or 'val_top1'")
    out_dir.mkdir(parents=True, exist_ok=True)
    device = model.temp.device
    n_micro = math.ceil(len(train) / config.batch_size)
    steps_per_epoch = math.ceil(n_micro / config.grad_accum)
    optimizer = make_optimizer(model, config, device)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, cosine_with_warmup(config.warmup_steps, steps_per_epoch * config.epochs))
    return _Run(model, train, val, config, out_dir, device, tokenizer, optimizer, scheduler,
                n_micro, steps_per_epoch)


def _initial_state(run: _Run, resume: bool) -> tuple[dict, int | None]:
    """The checkpoint's training state when it can be resumed, else a fresh one.

    Returns
    -------
    state : dict
        ``step``, ``fingerprint``, ``history``, ``best_value``, ``best_step``, ``bad_evals``,
        ``stopped``.
    resumed_from : int or None
        The step training resumes from.
    """
    fingerprint = (f"{run.config.fingerprint()}-"
                   f"{start_fingerprint(run.model, run.train, run.val)}")
    restored = restore_checkpoint(run.out_dir, fingerprint, resume, run.model, run.optimizer,
                                  run.scheduler)
    if restored is not None:
        return restored, restored["step"]
    return {"step": 0, "fingerprint": fingerprint, "history": [], "best_value": None,
            "best_step": -1, "bad_evals": 0, "stopped": False}, None


def _train_step(run: _Run, state: dict) -> dict:
    """One optimizer step (``grad_accum`` micro-batches); appends and returns its record."""
    config, step = run.config, state["step"]
    epoch, s = divmod(step, run.steps_per_epoch)
    perm = torch.randperm(len(run.train), generator=torch.Generator().manual_seed(
        config.seed * 1_000_003 + epoch))
    micro = range(s * config.grad_accum, min((s + 1) * config.grad_accum, run.n_micro))
    run.optimizer.zero_grad(set_to_none=True)
    logs = dict.fromkeys(LOSSES, 0.0)
    use_amp = bool(config.amp) and run.device.type == "cuda"
    for m in micro:
        idx = perm[m * config.batch_size:(m + 1) * config.batch_size]
        with torch.autocast(device_type=run.device.type, dtype=torch.bfloat16, enabled=use_amp):
            out = _forward(run.model, run.train, idx, run.device, run.tokenizer, config.max_length)
        (out.loss / len(micro)).backward()
        for k in logs:
            logs[k] += float(getattr(out, k).detach()) / len(micro)
    grad_norm = torch.nn.utils.clip_grad_norm_(
        [p for g in run.optimizer.param_groups for p in g["params"]], config.clip_norm)
    run.optimizer.step()
    run.scheduler.step()
    state["step"] = step + 1
    rec = {"step": step + 1, "split": "train", "epoch": epoch, **logs,
           "grad_norm": float(grad_norm), "lr": run.scheduler.get_last_lr()[0],
           "temperature": float(run.model.temperature.detach())}
    state["history"].append(rec)
    return rec


def _after_step(run: _Run, state: dict) -> None:
    """Validate every ``eval_every`` steps and checkpoint every ``checkpoint_every`` steps (and
    at the last step, or when early stopping ends training)."""
    step, config = state["step"], run.config
    if step % config.eval_every == 0 or step == run.total:
        run.model.eval()
        _validate(run, state, step)
        run.model.train()
    if step % config.checkpoint_every == 0 or step == run.total or state["stopped"]:
        save_checkpoint(run.out_dir, run.model, run.optimizer, run.scheduler, state)


def _validate(run: _Run, state: dict, step: int) -> None:
    """Evaluate on the validation pairs, record it, keep the best weights, count patience."""
    config = run.config
    metrics = evaluate(run.model, run.val, batch_size=config.batch_size, device=run.device,
                       tokenizer=run.tokenizer, max_length=config.max_length, seed=config.seed)
    value = metrics["loss"] if config.select_by == "val_loss" else metrics["top1"]
    state["history"].append({"step": step, "split": "val", **metrics})
    best = state["best_value"]
    if best is None or (value < best if config.select_by == "val_loss" else value > best):
        state.update(best_value=value, best_step=step, bad_evals=0)
        save_weights(run.model, run.out_dir / f"{BEST}.safetensors", {"step": step, **metrics})
    else:
        state["bad_evals"] += 1
        if config.patience is not None and state["bad_evals"] >= config.patience:
            state["stopped"] = True
