"""The noise ceiling (one definition; see :mod:`lib.scoring`), its null level and F-test."""

from __future__ import annotations

import numpy as np

from lib.scoring.correlation import _CHUNK, _as_np
from lib.scoring.significance import _significance


def _check_repeats(repeats) -> np.ndarray:
    R = _as_np(repeats)
    if R.ndim == 2:
        R = R[:, :, None]
    if R.ndim != 3:
        raise ValueError(
            f"repeats must have shape (n_images, n_reps, n_voxels); got {R.shape}."
        )
    if R.shape[1] < 2:
        raise ValueError(f"repeats has {R.shape[1]} repeat(s) per image; at least 2 are needed.")
    return R


def _anova(R: np.ndarray, chunk: int = _CHUNK):
    """One-way ANOVA of every voxel: images are the groups, repeats the observations.

    Images with fewer than two valid (finite) repeats are left out.

    Returns
    -------
    ms_between, ms_within : ndarrays of shape (n_voxels,)
    k0 : float
        Repeats per image (the ANOVA's average ``(N - sum k_i^2 / N) / (I - 1)``).
    df_between, df_within : int
    """
    finite = np.isfinite(R)
    valid = finite[:, :, 0]
    if not finite.all() and (finite.sum(2) != valid * R.shape[2]).any():
        raise ValueError("repeats has NaN in some voxels of a trial but not in others; a missing "
                         "repeat must be NaN in every voxel.")
    counts = valid.sum(1)
    keep = counts >= 2
    R, valid, counts = R[keep], valid[keep], counts[keep]
    n_img, n_all = int(keep.sum()), int(counts.sum())
    if n_img < 3:
        raise ValueError(f"only {n_img} images have two or more repeats; the noise ceiling needs "
                         "at least 3.")
    df_b, df_w = n_img - 1, n_all - n_img
    k0 = (n_all - (counts**2).sum() / n_all) / df_b
    ms_b = np.empty(R.shape[2])
    ms_w = np.empty(R.shape[2])
    complete = bool(valid.all())  # no missing repeat: no masks (about 2x faster, same sums)
    for j in range(0, R.shape[2], chunk):
        x = R[:, :, j : j + chunk].astype(np.float64)
        if not complete:
            x = np.where(valid[:, :, None], x, 0.0)
        mean_i = x.sum(1) / counts[:, None]
        grand = x.sum((0, 1)) / n_all
        dev = (mean_i - grand) * np.sqrt(counts)[:, None]
        ms_b[j : j + chunk] = np.einsum("ij,ij->j", dev, dev) / df_b
        x -= mean_i[:, None, :]
        if not complete:
            x = np.where(valid[:, :, None], x, 0.0)
        ms_w[j : j + chunk] = np.einsum("ijk,ijk->k", x, x) / df_w
    return ms_b, ms_w, float(k0), df_b, df_w


def noise_ceiling(repeats, n_average: int | None = None, pooled: bool = False):
    """Noise ceiling: the share of the variance of ``n_average``-trial means due to the image.

    ``NC = var_signal / (var_signal + var_noise / n_average)`` with ``var_noise = MS_within``
    and the unclipped ``var_signal = (MS_between - MS_within) / k0`` of a one-way ANOVA over
    images (see the module docstring). NSD's formula without its per-voxel clipping, so that
    responses that carry no image information give values scattered around zero.

    Parameters
    ----------
    repeats : ndarray of shape (n_images, n_reps, n_voxels)
        Single-trial responses; NaN in every voxel marks a missing repeat (images with fewer
        than two valid repeats are ignored).
    n_average : int or None
        Trials averaged in the responses a model is scored on (1: single trials; NSD's
        test-set analyses average 3). None uses ``n_reps``.
    pooled : bool
        Return one value for all voxels (an ROI), from their mean ``var_signal`` and
        ``var_noise``, instead of one per voxel.

    Returns
    -------
    nc : ndarray of shape (n_voxels,), or float when ``pooled``
        At most 1; negative values are estimation noise around zero. NaN where the
        denominator is not positive.
    """
    R = _check_repeats(repeats)
    n_avg = R.shape[1] if n_average is None else int(n_average)
    if n_avg < 1:
        raise ValueError(f"n_average must be a positive number of trials; got {n_average!r}.")
    ms_b, ms_w, k0, _, _ = _anova(R)
    var_signal = (ms_b - ms_w) / k0
    var_noise = ms_w
    if pooled:
        var_signal, var_noise = np.nanmean(var_signal), np.nanmean(var_noise)
    den = var_signal + var_noise / n_avg
    with np.errstate(invalid="ignore", divide="ignore"):
        nc = np.where(den > 0, var_signal / np.where(den > 0, den, 1.0), np.nan)
    return float(nc) if pooled else nc


def _shuffle_images(R: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Repeats with image labels shuffled independently in each repeat slot."""
    return np.stack([R[rng.permutation(R.shape[0]), k] for k in range(R.shape[1])], axis=1)


def noise_ceiling_null(repeats, n_average: int | None = None, pooled: bool = True,
                       n_permutations: int = 100, seed: int = 0) -> np.ndarray:
    """:func:`noise_ceiling` of responses whose image labels are shuffled across repeats.

    In each permutation every repeat slot gets its own random image order, so the "repeats"
    of an image come from different images: no image information is left, the noise stays.
    The distribution is the level the estimate reaches by chance.

    Parameters
    ----------
    repeats, n_average, pooled
        As for :func:`noise_ceiling`.
    n_permutations : int
    seed : int

    Returns
    -------
    null : ndarray of shape (n_permutations,) when ``pooled``, else (n_permutations, n_voxels)
    """
    R = _check_repeats(repeats)
    rng = np.random.default_rng(seed)
    return np.array([noise_ceiling(_shuffle_images(R, rng), n_average, pooled)
                     for _ in range(int(n_permutations))])


def noise_ceiling_pvalues(repeats) -> np.ndarray:
    """ANOVA F-test of ``var_signal > 0`` for every voxel (one-sided p-values).

    ``F = MS_between / MS_within`` with ``(n_images - 1, n_trials - n_images)`` degrees of
    freedom (exact for independent Gaussian noise).

    Parameters
    ----------
    repeats : ndarray of shape (n_images, n_reps, n_voxels)

    Returns
    -------
    p : ndarray of shape (n_voxels,)
    """
    from scipy.stats import f as f_dist

    ms_b, ms_w, _, df_b, df_w = _anova(_check_repeats(repeats))
    with np.errstate(invalid="ignore", divide="ignore"):
        return f_dist.sf(ms_b / ms_w, df_b, df_w)


def significant_noise_ceiling(repeats, n_average: int | None = None, q: float = 0.05) -> dict:
    """Per-voxel :func:`noise_ceiling` and the voxels whose ANOVA F-test passes, FDR-corrected.

    Parameters
    ----------
    repeats : ndarray of shape (n_images, n_reps, n_voxels)
    n_average : int or None
        As for :func:`noise_ceiling`.
    q : float
        False discovery rate (Benjamini-Hochberg over voxels).

    Returns
    -------
    result : dict
        ``noise_ceiling`` (n_voxels,), then as :func:`significant_r`: ``mask``, ``p_values``,
        ``threshold`` (the smallest noise ceiling that passes), ``q``, ``n`` (images) and
        ``test``.
    """
    R = _check_repeats(repeats)
    nc = noise_ceiling(R, n_average)
    n_img = int((np.isfinite(R[:, :, 0]).sum(1) >= 2).sum())
    out = _significance(nc, noise_ceiling_pvalues(R), q, n_img,
                        f"ANOVA F-test of image variance over {n_img} images, "
                        f"Benjamini-Hochberg FDR q < {q:g}", "NC")
    out["noise_ceiling"] = nc
    return out
