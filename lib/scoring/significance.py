"""Which voxels of a map are significant: p-values, Benjamini-Hochberg FDR, labels."""

from __future__ import annotations

import numpy as np


def fdr_mask(p_values, q: float = 0.05) -> np.ndarray:
    """Benjamini-Hochberg false-discovery-rate control over all tests.

    Parameters
    ----------
    p_values : ndarray of shape (n_tests,)
        NaN entries never pass.
    q : float
        False discovery rate.

    Returns
    -------
    mask : ndarray of shape (n_tests,) bool
        The tests whose p-value is at most the largest ``p_(k)`` with ``p_(k) <= q k / m``
        (``m`` finite p-values).
    """
    p = np.asarray(p_values, dtype=np.float64)
    finite = np.isfinite(p)
    m = int(finite.sum())
    mask = np.zeros(p.shape, dtype=bool)
    if m == 0:
        return mask
    ps = np.sort(p[finite])
    below = ps <= q * np.arange(1, m + 1) / m
    if below.any():
        cut = ps[np.flatnonzero(below).max()]
        mask[finite] = p[finite] <= cut
    return mask


def pearson_pvalues(r, n: int) -> np.ndarray:
    """One-sided p-values of Pearson correlations under the null of no correlation.

    ``t = r sqrt((n - 2) / (1 - r^2))`` follows Student's t with ``n - 2`` degrees of freedom
    (exact for Gaussian data); the alternative is ``r > 0`` (a model predicting the data).

    Parameters
    ----------
    r : ndarray of shape (n_targets,)
    n : int
        Samples each correlation is computed over (test images).

    Returns
    -------
    p : ndarray of shape (n_targets,)
    """
    from scipy.stats import t as t_dist

    if n < 3:
        raise ValueError(f"a correlation test needs at least 3 samples; got n={n}.")
    r = np.clip(np.asarray(r, dtype=np.float64), -1 + 1e-12, 1 - 1e-12)
    with np.errstate(invalid="ignore"):
        return t_dist.sf(r * np.sqrt((n - 2) / (1 - r**2)), n - 2)


def significant_r(r, n: int, q: float = 0.05) -> dict:
    """Voxels whose Pearson r over ``n`` samples passes a one-sided test, FDR-corrected.

    The analytic null of :func:`pearson_pvalues`, then Benjamini-Hochberg at ``q``
    (:func:`fdr_mask`). Every map of correlations in the book shows only these voxels.

    Parameters
    ----------
    r : ndarray of shape (n_voxels,)
    n : int
        Samples behind every correlation (test images).
    q : float
        False discovery rate.

    Returns
    -------
    result : dict
        ``mask`` (n_voxels,) bool, ``p_values`` (n_voxels,), ``threshold`` (the smallest r
        that passes; NaN when none does), ``q``, ``n``, ``test`` (a one-line description of
        the test for the text) and ``label`` (the threshold and count, for figure titles).
    """
    r = np.asarray(r, dtype=np.float64)
    return _significance(r, pearson_pvalues(r, n), q, int(n),
                         f"one-sided Pearson t-test over {n} images, Benjamini-Hochberg FDR "
                         f"q < {q:g}", "r")


def _significance(values: np.ndarray, p: np.ndarray, q: float, n: int, test: str,
                  name: str) -> dict:
    mask = fdr_mask(p, q) & np.isfinite(values)
    thr = float(values[mask].min()) if mask.any() else float("nan")
    label = (f"FDR q < {q:g}: {name} >= {thr:.3f}, {int(mask.sum())} voxels" if mask.any()
             else f"FDR q < {q:g}: no voxel passes")
    return {"mask": mask, "p_values": p, "threshold": thr, "q": q, "n": n, "test": test,
            "label": label}
