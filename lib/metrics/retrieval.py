"""k-way top-1 retrieval: the one implementation every notebook, test and benchmark uses.

Two entry points share one core:

- :func:`retrieval_from_similarity` works from a square similarity matrix (``sim[i, j]``:
  query item i against candidate j, the match of i being j = i), so any similarity fits, e.g.
  BLIP-2's image-text contrastive score (maximum over query tokens of the cosine);
- :func:`retrieval_topk` is its front end for embeddings: cosine of the flattened embeddings,
  optionally centred on the mean embedding of the candidate set.

For each draw, k of the n items are sampled without replacement (when k equals n a single draw
holds every item: only one draw is possible, and that is what the result says). In the forward
direction (brain -> image) each query counts as retrieved when its similarity to its own
candidate beats every other candidate of the draw; backward (image -> brain) the same from each
candidate to the k queries. Every option is an explicit argument and is written into the result
under ``"options"``, next to the numbers it produced.
"""

from __future__ import annotations

import numpy as np

from .stats import wilson_interval

#: Tie rules: ``"strict"`` counts a tie with the correct item as a failure (conservative);
#: ``"fractional"`` counts a tie among m items as 1/m (the expectation of breaking it at random).
TIE_RULES = ("strict", "fractional")

#: Centring choices of :func:`retrieval_topk`.
CENTRINGS = ("candidates", "none")


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


def _draws(n: int, k: int, n_draws: int, seed: int) -> np.ndarray:
    """Indices of the items of every draw, shape (n_draws_made, k)."""
    if k == n:
        return np.arange(n)[None, :]
    rng = np.random.default_rng(seed)
    return np.stack([rng.choice(n, size=k, replace=False) for _ in range(n_draws)])


def _hits(diag: np.ndarray, others: np.ndarray, sub: np.ndarray, axis: int, tie: str):
    """Per-item score of every draw, shape (n_draws, k), under the tie rule."""
    best_other = others.max(axis=axis)
    if tie == "strict":
        return (diag > best_other).astype(np.float64)
    n_tied = (sub == np.expand_dims(diag, axis)).sum(axis=axis)  # the item itself included
    return np.where(diag >= best_other, 1.0 / n_tied, 0.0)


def _draw_hits(sim: np.ndarray, idx: np.ndarray, tie: str) -> tuple[np.ndarray, np.ndarray]:
    """Forward and backward per-item scores of every draw, each of shape (n_draws, k)."""
    sub = sim[idx[:, :, None], idx[:, None, :]]  # (draws, k, k)
    diag = np.diagonal(sub, axis1=1, axis2=2)  # (draws, k)
    others = np.where(np.eye(idx.shape[1], dtype=bool)[None], -np.inf, sub)
    fwd = _hits(diag, others, sub, 2, tie)  # each row (query) among the k candidates
    bwd = _hits(diag, others, sub, 1, tie)  # each column (candidate) among the k queries
    return fwd, bwd


def _draws_note(n: int, k: int, made: int) -> str:
    """The sentence recorded under ``options["draws"]``."""
    if k == n:
        return f"one draw holding all {n} items (k = n_items)"
    return f"{made} random draws of {k} of {n} items without replacement"


def _summary(acc: np.ndarray, hits: np.ndarray, idx: np.ndarray, n: int, k: int) -> dict:
    mean = float(acc.mean())
    lo, hi = np.percentile(acc, [2.5, 97.5])
    sums = np.bincount(idx.ravel(), weights=hits.ravel(), minlength=n)
    counts = np.bincount(idx.ravel(), minlength=n)
    per_item = np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)
    return {
        "mean": mean,
        "ci95": [float(lo), float(hi)],
        "ci95_binomial": [float(v) for v in wilson_interval(mean * k, k)],
        "draws": [float(a) for a in acc],
        "per_item": [None if np.isnan(v) else float(v) for v in per_item],
    }


def _check_similarity(sim, k: int, n_draws: int, tie: str, directions) -> np.ndarray:
    """``sim`` as a finite float64 (n, n) array, n >= 2, after checking the options."""
    sim = np.asarray(sim, dtype=np.float64)
    n = sim.shape[0]
    if sim.ndim != 2 or sim.shape != (n, n) or n < 2:
        raise ValueError(f"sim must be a square (n, n) matrix with n >= 2, got {sim.shape}.")
    if not np.all(np.isfinite(sim)):
        raise ValueError("sim contains NaN or infinite values.")
    if k < 2:
        raise ValueError(f"k must be at least 2, got {k}.")
    if n_draws < 1:
        raise ValueError(f"n_draws must be at least 1, got {n_draws}.")
    if tie not in TIE_RULES:
        raise ValueError(f"tie={tie!r}; expected one of {TIE_RULES}.")
    if len(directions) != 2 or directions[0] == directions[1]:
        raise ValueError(f"directions must be two different names, got {directions!r}.")
    return sim


# size: 9 parameters, each a retrieval option written into the result's "options"; callers
# pass them as keywords (lib.decoding.retrieval builds them per rule)
def retrieval_from_similarity(sim, k: int = 300, n_draws: int = 30, seed: int = 0, *,
                              repeat_averaged: bool | None, tie: str = "strict",
                              directions: tuple[str, str] = ("forward", "backward"),
                              similarity: str = "given similarity matrix",
                              centring: str = "none") -> dict:
    """k-way top-1 accuracy in both directions from a similarity matrix.

    Parameters
    ----------
    sim : array-like of shape (n_items, n_items)
        ``sim[i, j]``: similarity of query item i (e.g. a brain sample) to candidate j (e.g. an
        image or a caption); the match of i is j = i.
    k : int
        Candidates per retrieval (300 on NSD, as in MindEye); capped at ``n_items``, in which
        case a single draw holds every item.
    n_draws : int
        Random draws of k items requested; one draw is made when k reaches ``n_items``.
    seed : int
        Seed of the draws.
    repeat_averaged : bool or None
        Whether the caller averaged each image's predictions over its repeated trials before
        computing ``sim`` (recorded, not done here); None when the items are not brain samples.
    tie : {"strict", "fractional"}
        See :data:`TIE_RULES`.
    directions : pair of str
        Names of the forward (rows retrieve columns) and backward (columns retrieve rows)
        results, e.g. ``("brain_to_image", "image_to_brain")``.
    similarity, centring : str
        Descriptions recorded in the options (what ``sim`` is, how embeddings were centred).

    Returns
    -------
    result : dict
        ``directions[0]`` and ``directions[1]``, each with ``"mean"`` (top-1 accuracy averaged
        over draws), ``"ci95"`` (2.5 and 97.5 percentiles of the draw accuracies: which k items
        were drawn; a point when one draw holds every item), ``"ci95_binomial"`` (Wilson
        interval of one k-way test with k trials: the interval to compare with chance),
        ``"draws"`` (accuracy of each draw) and ``"per_item"`` (length n: each item's mean score
        over the draws that held it, None when never drawn); ``"chance"`` (1/k), ``"k"``,
        ``"n_items"``, ``"n_draws"`` (draws actually made), ``"seed"`` and ``"options"`` (every
        option above, with ``k_requested``, ``n_draws_requested`` and ``draws``, a sentence).
    """
    sim = _check_similarity(sim, k, n_draws, tie, directions)
    n = sim.shape[0]
    k_used = min(int(k), n)
    idx = _draws(n, k_used, int(n_draws), seed)
    fwd, bwd = _draw_hits(sim, idx, tie)
    made = int(idx.shape[0])
    options = {"k_requested": int(k), "k": k_used, "n_draws_requested": int(n_draws),
               "n_draws": made, "draws": _draws_note(n, k_used, made), "seed": int(seed),
               "tie": tie, "repeat_averaged": repeat_averaged, "similarity": similarity,
               "centring": centring}
    return {directions[0]: _summary(fwd.mean(axis=1), fwd, idx, n, k_used),
            directions[1]: _summary(bwd.mean(axis=1), bwd, idx, n, k_used),
            "chance": 1.0 / k_used, "k": k_used, "n_items": n, "n_draws": made,
            "seed": int(seed), "options": options}


# size: 9 parameters: retrieval_from_similarity's options plus the embeddings and centring
def retrieval_topk(pred, true, k: int = 300, n_draws: int = 30, seed: int = 0, *,
                   repeat_averaged: bool | None, center: str = "candidates",
                   tie: str = "strict",
                   directions: tuple[str, str] = ("brain_to_image", "image_to_brain")) -> dict:
    """k-way top-1 retrieval between predicted and true embeddings (cosine).

    Embeddings are flattened, e.g. (n, 32, 768) -> (n, 24576). With ``center="candidates"``
    the mean of the true (candidate) embeddings of all n items is subtracted from both sides
    before the cosine: Q-Former outputs share a large image-independent component, so raw
    cosines between different images are all close to 1.

    Parameters
    ----------
    pred : array-like of shape (n_items, ...)
        Predicted (brain-decoded) embeddings; numpy array or torch tensor.
    true : array-like of shape (n_items, ...)
        True (image) embeddings, row-aligned with ``pred``.
    k, n_draws, seed, repeat_averaged, tie
        As in :func:`retrieval_from_similarity`.
    center : {"candidates", "none"}
        Subtract the mean of ``true`` before the cosine, or not.
    directions : pair of str
        Result names, brain -> image first.

    Returns
    -------
    result : dict
        As :func:`retrieval_from_similarity`; ``options["centring"]`` and
        ``options["similarity"]`` say what was computed.
    """
    if center not in CENTRINGS:
        raise ValueError(f"center={center!r}; expected one of {CENTRINGS}.")
    pred = _as_2d(pred, "pred")
    true = _as_2d(true, "true")
    if pred.shape != true.shape:
        raise ValueError(f"pred and true must have the same shape after flattening; got "
                         f"{pred.shape} and {true.shape}.")
    if pred.shape[0] < 2:
        raise ValueError(f"retrieval needs at least 2 items, got {pred.shape[0]}.")
    centring = "none"
    if center == "candidates":
        mean = true.mean(axis=0)
        pred, true = pred - mean, true - mean
        centring = f"mean true embedding of the {len(true)} candidate items subtracted"
    sim = _unit(pred) @ _unit(true).T  # row i: predicted i against true j
    return retrieval_from_similarity(sim, k, n_draws, seed, repeat_averaged=repeat_averaged,
                                     tie=tie, directions=directions,
                                     similarity="cosine of flattened embeddings",
                                     centring=centring)


def retrieval_table(results: dict, key_names: tuple[str, ...] = ("key",)):
    """Flatten retrieval results into one row per (key, direction).

    Parameters
    ----------
    results : dict
        ``key -> result`` of :func:`retrieval_from_similarity` / :func:`retrieval_topk`; keys
        are tuples of ``len(key_names)`` values, or single values when there is one name.
    key_names : tuple of str
        Column names of the key parts.

    Returns
    -------
    table : pandas.DataFrame
        Columns ``key_names``, ``direction``, ``top1``, ``ci95_low``,
        ``ci95_high`` (over draws), ``binom_low``, ``binom_high`` (Wilson interval of one
        k-way test), ``chance``, ``k``, ``n_draws`` (made), ``centring``, ``repeat_averaged``,
        ``tie``.
    """
    import pandas as pd

    rows = []
    for key, res in results.items():
        parts = key if isinstance(key, tuple) else (key,)
        if len(parts) != len(key_names):
            raise ValueError(f"key {key!r} does not match key_names {key_names!r}.")
        keys = dict(zip(key_names, parts))
        opts = res.get("options", {})
        for direction, r in res.items():
            if not (isinstance(r, dict) and "mean" in r):
                continue
            rows.append({**keys, "direction": direction.replace("_", " "), "top1": r["mean"],
                         "ci95_low": r["ci95"][0], "ci95_high": r["ci95"][1],
                         "binom_low": r["ci95_binomial"][0], "binom_high": r["ci95_binomial"][1],
                         "chance": res["chance"], "k": res["k"], "n_draws": res["n_draws"],
                         "centring": opts.get("centring"),
                         "repeat_averaged": opts.get("repeat_averaged"), "tie": opts.get("tie")})
    return pd.DataFrame(rows)
