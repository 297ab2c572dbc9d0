"""Small training utilities shared by the toy models: seeding, schedules, batching, threads."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator

import numpy as np

from ...config import physical_cores
from ..timing import Stopwatch


def torch_generator(seed: int, stream: int):
    """A CPU :class:`torch.Generator` seeded from ``(seed, stream)`` (independent streams)."""
    import torch

    ss = np.random.SeedSequence([int(seed), int(stream)])
    g = torch.Generator()
    g.manual_seed(int(ss.generate_state(1, dtype=np.uint64)[0] % (2**63 - 1)))
    return g


def seeded_init(model_cls, config, seed: int, stream: int):
    """Build ``model_cls(config)`` with weights initialised from a fixed seed stream."""
    import torch

    g = torch_generator(seed, stream)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(torch.randint(0, 2**62, (1,), generator=g)))
        model = model_cls(config)
    return model


def optimizer_step(optimizer, loss, params, max_norm: float = 1.0) -> None:
    """One update: clear gradients, back-propagate ``loss``, clip their norm, step."""
    import torch

    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, max_norm)
    optimizer.step()


def pad_sequences(seqs: list, pad_id: int):
    """Right-pad token id lists into one array (one vectorised copy, no per-row tensors).

    Returns
    -------
    ids, mask : LongTensor of shape (n_seqs, max_len)
        ``ids`` padded with ``pad_id``; ``mask`` 1 on the tokens, 0 on the padding.
    """
    import torch

    lengths = np.fromiter(map(len, seqs), dtype=np.int64, count=len(seqs))
    keep = np.arange(int(lengths.max(initial=0)))[None, :] < lengths[:, None]
    ids = np.full(keep.shape, int(pad_id), dtype=np.int64)
    ids[keep] = np.fromiter((t for s in seqs for t in s), dtype=np.int64, count=int(lengths.sum()))
    return torch.from_numpy(ids), torch.from_numpy(keep.astype(np.int64))


def shuffled_batches(n: int, batch_size: int, rng: np.random.Generator,
                     drop_last: bool = True) -> Iterator:
    """Yield index arrays of one shuffled epoch over ``n`` items."""
    perm = rng.permutation(n)
    stop = n - n % batch_size if drop_last and n >= batch_size else n
    for i in range(0, stop, batch_size):
        yield perm[i : i + batch_size]


def cosine_lr(step: int, total: int, lr: float, warmup: int) -> float:
    """Linear warm-up then cosine decay to 5% of ``lr``."""
    if step < warmup:
        return lr * (step + 1) / warmup
    t = (step - warmup) / max(total - warmup, 1)
    return lr * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(t, 1.0))))


def adamw(model_or_params, lr: float, weight_decay: float = 0.01):
    """AdamW over the trainable parameters (no decay on biases and norms)."""
    import torch

    params = (
        [p for p in model_or_params.parameters() if p.requires_grad]
        if hasattr(model_or_params, "parameters")
        else list(model_or_params)
    )
    decay = [p for p in params if p.ndim >= 2]
    no_decay = [p for p in params if p.ndim < 2]
    return torch.optim.AdamW(
        [{"params": decay, "weight_decay": weight_decay},
         {"params": no_decay, "weight_decay": 0.0}],
        lr=lr,
    )


# size: 10 parameters: the loss and what it updates, the schedule (n, batch_size, epochs, lr,
# weight_decay, max_steps), the shuffling generator and a progress label.
def train_epochs(step_loss, params, n: int, batch_size: int, epochs: int, lr: float,
                 rng: np.random.Generator, desc: str, weight_decay: float = 0.01,
                 max_steps: int | None = None) -> dict:
    """Shuffled mini-batch epochs: AdamW, linear warm-up then cosine decay, gradient clipping.

    Parameters
    ----------
    step_loss : callable
        ``step_loss(idx)`` returns the scalar loss of the items ``idx`` (an index array).
    params : iterable of torch.nn.Parameter
        What the optimizer updates (and whose gradient norm is clipped).
    n : int
        Number of training items.
    batch_size, epochs, lr : int, int, float
        Mini-batch size (capped at ``n``; the last partial batch is dropped), passes over the
        data and peak learning rate (warm-up over the first 5% of steps).
    rng : numpy.random.Generator
        Shuffles every epoch.
    desc : str
        Progress-bar label.
    weight_decay : float
        AdamW decay of weight matrices (biases and norms are not decayed).
    max_steps : int or None
        Stop after this many steps (the schedule spans them), mid-epoch if need be.

    Returns
    -------
    history : dict
        ``loss`` per step, ``seconds`` (wall time) and ``cpu_seconds`` (process CPU time).
    """
    from tqdm.auto import tqdm

    params = list(params)
    bs = min(int(batch_size), n)
    total = (n // bs) * int(epochs)
    if max_steps is not None:
        total = min(total, int(max_steps))
    optimizer = adamw(params, lr, weight_decay=weight_decay)
    history: dict = {"loss": []}
    with Stopwatch() as timer, tqdm(total=total, desc=desc, leave=False) as bar:
        step = 0
        for _ in range(int(epochs)):
            for idx in shuffled_batches(n, bs, rng):
                if step >= total:
                    break
                set_lr(optimizer, cosine_lr(step, total, lr, max(total // 20, 1)))
                loss = step_loss(idx)
                optimizer_step(optimizer, loss, params)
                step += 1
                history["loss"].append(round(float(loss.detach()), 4))
                bar.update(1)
                bar.set_postfix(loss=f"{history['loss'][-1]:.3f}")
    history["seconds"] = timer.wall_s
    history["cpu_seconds"] = timer.cpu_s
    return history


def set_lr(optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr


def count_params(model) -> int:
    """Number of parameters of a model (shared tensors counted once)."""
    seen, total = set(), 0
    for p in model.parameters():
        if id(p) not in seen:
            seen.add(id(p))
            total += p.numel()
    return int(total)


def auto_threads() -> int:
    """Training threads: ``OMP_NUM_THREADS`` when set, else the physical cores."""
    import os

    env = os.environ.get("OMP_NUM_THREADS", "").strip()
    return int(env) if env.isdigit() and int(env) > 0 else physical_cores()


@contextlib.contextmanager
def num_threads(n: int | None):
    """Temporarily set torch's intra-op thread count (``None`` leaves it alone)."""
    import torch

    old = torch.get_num_threads()
    if n:
        torch.set_num_threads(int(n))
    try:
        yield
    finally:
        torch.set_num_threads(old)


