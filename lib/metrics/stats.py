"""Paired permutation tests, bootstrap and binomial intervals for evaluation metrics."""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np


def _vector(x, name: str) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 1 or x.size == 0:
        raise ValueError(f"{name} must be a non-empty 1-D array, got shape {x.shape}.")
    if not np.all(np.isfinite(x)):
        raise ValueError(f"{name} contains NaN or infinite values.")
    return x


def permutation_test(
    scores_a, scores_b, n_permutations: int = 10000, seed: int = 0, chunk: int = 1000
) -> dict:
    """Paired sign-flip permutation test that system a scores higher than system b.

    Under the null hypothesis the per-item differences ``d = a - b`` are symmetric about
    zero, so each difference's sign is flipped at random; the p-value is the fraction of
    flipped mean differences at least as large as the observed one, with the +1 correction
    ``p = (1 + #{null >= observed}) / (1 + n_permutations)`` (never 0).

    Parameters
    ----------
    scores_a, scores_b : array-like of shape (n_items,)
        Per-item scores of the two systems on the same items (e.g. ``per_item["CIDEr"]``
        of decoded vs shuffled-brain captions).
    n_permutations : int
        Number of random sign flips.
    seed : int
        Seed of the sign flips.
    chunk : int
        Permutations drawn at once (memory: chunk x n_items floats).

    Returns
    -------
    result : dict
        ``"p_value"``, ``"observed_diff"`` (mean of a - b), ``"mean_a"``, ``"mean_b"``,
        ``"n_items"``, ``"n_permutations"``, ``"alternative"`` ("greater"), ``"seed"``.
    """
    a = _vector(scores_a, "scores_a")
    b = _vector(scores_b, "scores_b")
    if a.shape != b.shape:
        raise ValueError(
            f"scores_a and scores_b must be paired (same length); got {a.size} and {b.size}."
        )
    if n_permutations < 1:
        raise ValueError(f"n_permutations must be >= 1, got {n_permutations}.")
    d = a - b
    observed = float(d.mean())
    rng = np.random.default_rng(seed)
    exceed, done = 0, 0
    tol = 1e-12 * max(1.0, abs(observed))
    while done < n_permutations:
        m = min(chunk, n_permutations - done)
        signs = rng.integers(0, 2, size=(m, d.size)) * 2 - 1
        null = (signs * d).mean(axis=1)
        exceed += int(np.count_nonzero(null >= observed - tol))
        done += m
    return {
        "p_value": (1 + exceed) / (1 + n_permutations),
        "observed_diff": observed,
        "mean_a": float(a.mean()),
        "mean_b": float(b.mean()),
        "n_items": int(d.size),
        "n_permutations": int(n_permutations),
        "alternative": "greater",
        "seed": seed,
    }


def bootstrap_ci(
    values,
    n_boot: int = 10000,
    seed: int = 0,
    level: float = 0.95,
    statistic: Callable[[np.ndarray], np.ndarray] | None = None,
    chunk: int = 1000,
) -> dict:
    """Percentile bootstrap interval of a statistic of per-item values (items resampled).

    Parameters
    ----------
    values : array-like of shape (n_items,)
        Per-item scores (e.g. ``per_item["METEOR"]``).
    n_boot : int
        Number of bootstrap resamples.
    seed : int
        Seed of the resampling.
    level : float
        Coverage of the interval.
    statistic : callable or None
        Maps an array of shape (n_resamples, n_items) to (n_resamples,); default: the mean
        over items.

    Returns
    -------
    result : dict
        ``"estimate"`` (statistic on the data), ``"low"``, ``"high"``, ``"level"``,
        ``"n_boot"``, ``"seed"``.
    """
    x = _vector(values, "values")
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}.")
    stat = statistic or (lambda v: v.mean(axis=-1))
    rng = np.random.default_rng(seed)
    boots = []
    done = 0
    while done < n_boot:
        m = min(chunk, n_boot - done)
        idx = rng.integers(0, x.size, size=(m, x.size))
        boots.append(np.asarray(stat(x[idx]), dtype=float))
        done += m
    boots = np.concatenate(boots)
    alpha = (1 - level) / 2
    lo, hi = np.percentile(boots, [100 * alpha, 100 * (1 - alpha)])
    return {
        "estimate": float(np.asarray(stat(x[None, :])).ravel()[0]),
        "low": float(lo),
        "high": float(hi),
        "level": level,
        "n_boot": int(n_boot),
        "seed": seed,
    }


def wilson_interval(successes: float, trials: int, level: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion.

    Parameters
    ----------
    successes : float
        Number of successes (may be fractional, e.g. a mean accuracy times ``trials``).
    trials : int
        Number of trials.
    level : float
        Coverage (0.95 -> z = 1.96).

    Returns
    -------
    low, high : float
    """
    from scipy.stats import norm

    if trials <= 0:
        raise ValueError(f"trials must be positive, got {trials}.")
    z = float(norm.ppf(0.5 + level / 2))
    p = successes / trials
    denom = 1 + z**2 / trials
    centre = (p + z**2 / (2 * trials)) / denom
    half = z * math.sqrt(p * (1 - p) / trials + z**2 / (4 * trials**2)) / denom
    # the interval always holds the estimate (rounding put low a hair above 0 at 0 successes)
    return max(0.0, min(p, centre - half)), min(1.0, max(p, centre + half))
