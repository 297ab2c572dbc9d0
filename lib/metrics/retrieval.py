"""k-way top-1 image retrieval between predicted (brain) and true (image) embeddings."""

from __future__ import annotations

import numpy as np

from .stats import wilson_interval


def _as_2d(x, name: str) -> np.ndarray:
    if hasattr(x, "detach"):  # torch tensor
        x = x.detach().cpu().float().numpy()
    x = np.asarray(x, dtype=np.float64)
    if x.ndim < 2:
        raise ValueError(f"{name} must have shape (n_items, ...), got shape {x.shape}.")
    x = x.reshape(x.shape[0], -1)
    if not np.all(np.isfinite(x)):
        raise ValueError(f"{name} contains NaN or infinite values.")
    return x


def _unit(x: np.ndarray) -> np.ndarray:
    norm = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.where(norm > 0, norm, 1.0)


def retrieval_topk(pred, true, k: int = 300, n_draws: int = 30, seed: int = 0) -> dict:
    """k-way top-1 retrieval accuracy in both directions over random draws of k items.

    For each draw, k test items are sampled without replacement. Brain -> image: an item
    counts as correct when the cosine similarity between its predicted embedding and its
    own true embedding is strictly larger than with every other true embedding among the k
    candidates (ties count as failures). Image -> brain: the same from each true embedding
    to the k predicted ones. Embeddings are flattened, e.g. (n, 32, 768) -> (n, 24576).

    Parameters
    ----------
    pred : array-like of shape (n_items, ...)
        Predicted (brain-decoded) embeddings; numpy array or torch tensor.
    true : array-like of shape (n_items, ...)
        True (image) embeddings, row-aligned with ``pred``.
    k : int
        Number of candidates per retrieval (300 on NSD, as in MindEye). When ``n_items < k``
        every item is used in a single draw.
    n_draws : int
        Number of random draws of k items.
    seed : int
        Seed of the draws.

    Returns
    -------
    result : dict
        ``"brain_to_image"`` and ``"image_to_brain"``, each a dict with ``"mean"`` (mean
        top-1 accuracy over draws), ``"ci95"`` ([low, high]: 2.5 and 97.5 percentiles of
        the draw accuracies; it reflects which k items are drawn, and collapses to a point
        when a single draw uses every item), ``"ci95_binomial"`` ([low, high]: Wilson score
        interval for the accuracy of one k-way test, i.e. binomial sampling noise with k
        trials) and ``"draws"`` (list of per-draw accuracies); plus ``"chance"`` (1/k),
        ``"k"``, ``"n_items"``, ``"n_draws"`` (draws actually made), ``"seed"``.
    """
    pred = _as_2d(pred, "pred")
    true = _as_2d(true, "true")
    if pred.shape != true.shape:
        raise ValueError(
            f"pred and true must have the same shape after flattening; got {pred.shape} and {true.shape}."
        )
    n = pred.shape[0]
    if n < 2:
        raise ValueError(f"retrieval needs at least 2 items, got {n}.")
    if k < 2:
        raise ValueError(f"k must be at least 2, got {k}.")
    if n_draws < 1:
        raise ValueError(f"n_draws must be at least 1, got {n_draws}.")
    k_used = min(int(k), n)
    sim = _unit(pred) @ _unit(true).T  # (n, n): row i = predicted i against true j

    if k_used == n:
        idx = np.arange(n)[None, :]
    else:
        rng = np.random.default_rng(seed)
        idx = np.stack([rng.choice(n, size=k_used, replace=False) for _ in range(n_draws)])
    sub = sim[idx[:, :, None], idx[:, None, :]]  # (draws, k, k)
    diag = np.diagonal(sub, axis1=1, axis2=2)  # (draws, k)
    eye = np.eye(k_used, dtype=bool)[None]
    others = np.where(eye, -np.inf, sub)
    b2i = (diag > others.max(axis=2)).mean(axis=1)  # best among true for each predicted
    i2b = (diag > others.max(axis=1)).mean(axis=1)  # best among predicted for each true

    def _summary(acc: np.ndarray) -> dict:
        mean = float(acc.mean())
        lo, hi = np.percentile(acc, [2.5, 97.5])
        return {
            "mean": mean,
            "ci95": [float(lo), float(hi)],
            "ci95_binomial": list(wilson_interval(mean * k_used, k_used)),
            "draws": [float(a) for a in acc],
        }

    return {
        "brain_to_image": _summary(b2i),
        "image_to_brain": _summary(i2b),
        "chance": 1.0 / k_used,
        "k": k_used,
        "n_items": n,
        "n_draws": int(idx.shape[0]),
        "seed": seed,
    }
