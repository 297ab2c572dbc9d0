"""Per-target prediction scores, noise ceilings and significance of per-voxel maps.

All scores are vectorised over targets (voxels, feature dimensions) and computed in
float64 over chunks of targets, so (n_samples, 100k targets) arrays never need a float64
copy at once. Inputs may be NumPy arrays or torch tensors; outputs are NumPy arrays.

Noise ceiling
-------------
One definition, :func:`noise_ceiling`. With single-trial responses of ``n_images`` images,
image ``i`` seen ``k_i`` times, a one-way random-effects ANOVA splits each voxel's variance:

- noise variance ``var_noise = MS_within`` (pooled variance across repeats of an image);
- signal variance ``var_signal = (MS_between - MS_within) / k0`` (``k0`` the repeats per
  image, its ANOVA average when they differ), an unbiased estimate that is **not** clipped at
  zero: on responses without image information it scatters around zero;
- the noise ceiling of responses averaged over ``n_average`` trials, the fraction of their
  variance that the image explains:
  ``NC = var_signal / (var_signal + var_noise / n_average)``.

This is NSD's definition (Allen et al. 2022, Methods "Noise ceiling":
``NC = ncsnr^2 / (ncsnr^2 + 1/n_average)`` with ``ncsnr^2 = var_signal / var_noise``) without
NSD's clipping of ``var_signal`` at zero per voxel, which biases the ceiling upward where
there is little or no signal. For an ROI, ``pooled=True`` forms the ratio from the voxels'
mean ``var_signal`` and ``var_noise``. ``NC`` bounds the test R^2 of a model of the averaged
responses; ``sqrt(NC)`` bounds its Pearson r. :func:`noise_ceiling_null` gives the level the
estimate reaches by chance (image labels shuffled across repeats), :func:`noise_ceiling_pvalues`
the ANOVA F-test of ``var_signal > 0`` per voxel.

Significance of maps
--------------------
:func:`fdr_mask` (Benjamini-Hochberg) turns per-voxel p-values into the voxels a map may
show; :func:`significant_r` does it for Pearson correlations over ``n`` samples.
"""

from __future__ import annotations

import numpy as np
import torch

_CHUNK = 8192


def _as_np(a) -> np.ndarray:
    if isinstance(a, torch.Tensor):
        return a.detach().cpu().numpy()
    return np.asarray(a)


def _pair(y_true, y_pred):
    yt, yp = _as_np(y_true), _as_np(y_pred)
    if yt.shape != yp.shape:
        raise ValueError(f"y_true has shape {yt.shape} but y_pred has shape {yp.shape}; "
                         "they must match.")
    if yt.ndim == 1:
        yt, yp = yt[:, None], yp[:, None]
    if yt.ndim != 2:
        raise ValueError(f"expected (n_samples, n_targets) arrays, got shape {yt.shape}.")
    if yt.shape[0] < 2:
        raise ValueError("scores need at least 2 samples.")
    return yt, yp


def pearson_r(y_true, y_pred, chunk: int = _CHUNK) -> np.ndarray:
    """Pearson correlation of every target (column) between truth and prediction.

    Parameters
    ----------
    y_true, y_pred : ndarray or tensor of shape (n_samples, n_targets) or (n_samples,)
    chunk : int
        Targets processed at once (float64 work arrays of shape (n_samples, chunk)).

    Returns
    -------
    r : ndarray of shape (n_targets,)
        NaN where either column is constant.
    """
    yt, yp = _pair(y_true, y_pred)
    out = np.empty(yt.shape[1], dtype=np.float64)
    for j in range(0, yt.shape[1], chunk):
        a = yt[:, j : j + chunk].astype(np.float64)
        b = yp[:, j : j + chunk].astype(np.float64)
        a = a - a.mean(0)
        b = b - b.mean(0)
        den = np.sqrt((a * a).sum(0) * (b * b).sum(0))
        with np.errstate(invalid="ignore", divide="ignore"):
            out[j : j + chunk] = np.where(den > 0, (a * b).sum(0) / den, np.nan)
    return out


def paired_bootstrap_mean_r(y_true, pred_a, pred_b, n_boot: int = 1000, seed: int = 0,
                            ci: float = 0.95) -> dict:
    """Bootstrap over samples (test images) of the difference in mean Pearson r of two models.

    Both models are scored on the same resampled images (a paired comparison), so what the
    interval measures is how much the difference depends on which test images were drawn.
    Each resample's score is the mean over targets (voxels) of the per-target r.

    Parameters
    ----------
    y_true, pred_a, pred_b : ndarray of shape (n_samples, n_targets)
    n_boot : int
        Resamples of the ``n_samples`` rows, with replacement.
    seed : int
    ci : float
        Coverage of the percentile interval.

    Returns
    -------
    result : dict
        ``difference`` (mean r of a minus b on all samples), ``ci_low``, ``ci_high`` and
        ``p_value``: the share of resamples in which a does not beat b (one-sided).
    """
    y, a = _pair(y_true, pred_a)
    _, b = _pair(y_true, pred_b)
    n = y.shape[0]
    rng = np.random.default_rng(seed)
    # resample k as counts of each row; the full sample is the last "resample"
    counts = np.stack([np.bincount(rng.integers(0, n, n), minlength=n) for _ in range(int(n_boot))]
                      + [np.ones(n, dtype=np.int64)]).astype(np.float64)
    diff = _weighted_mean_r(counts, y, a) - _weighted_mean_r(counts, y, b)
    boots = diff[:-1]
    tail = (1 - ci) / 2 * 100
    return {"difference": float(diff[-1]),
            "ci_low": float(np.percentile(boots, tail)),
            "ci_high": float(np.percentile(boots, 100 - tail)),
            "p_value": float(np.mean(boots <= 0))}


def _weighted_mean_r(counts, y_true, y_pred, chunk: int = 2048) -> np.ndarray:
    """Mean over targets of the Pearson r of every resample given as row counts.

    Parameters
    ----------
    counts : ndarray of shape (n_resamples, n_samples)
        How often each sample is drawn in each resample (rows sum to the resample size).
    y_true, y_pred : ndarray of shape (n_samples, n_targets)

    Returns
    -------
    mean_r : ndarray of shape (n_resamples,)
        ``nanmean`` over targets of each resample's r (NaN where a column is constant in it).
    """
    size = counts.sum(1, keepdims=True)
    total = np.zeros(counts.shape[0])
    finite = np.zeros(counts.shape[0])
    for j in range(0, y_true.shape[1], chunk):
        a = y_true[:, j : j + chunk].astype(np.float64)
        b = y_pred[:, j : j + chunk].astype(np.float64)
        a -= a.mean(0)  # centred on the full sample: r is unchanged, the sums lose less
        b -= b.mean(0)
        sa, sb = counts @ a, counts @ b
        cov = counts @ (a * b) - sa * sb / size
        var_a = counts @ (a * a) - sa * sa / size
        var_b = counts @ (b * b) - sb * sb / size
        den = np.sqrt(np.clip(var_a, 0, None) * np.clip(var_b, 0, None))
        with np.errstate(invalid="ignore", divide="ignore"):
            r = np.where(den > 0, cov / den, np.nan)
        total += np.nansum(r, 1)
        finite += np.isfinite(r).sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return total / finite


def r2_score(y_true, y_pred, chunk: int = _CHUNK) -> np.ndarray:
    """Coefficient of determination of every target: ``1 - SS_res / SS_tot``.

    Same definition as ``sklearn.metrics.r2_score(..., multioutput="raw_values")``
    (``SS_tot`` about the mean of ``y_true``), but NaN for constant targets.

    Parameters
    ----------
    y_true, y_pred : ndarray or tensor of shape (n_samples, n_targets) or (n_samples,)

    Returns
    -------
    r2 : ndarray of shape (n_targets,)
    """
    yt, yp = _pair(y_true, y_pred)
    out = np.empty(yt.shape[1], dtype=np.float64)
    for j in range(0, yt.shape[1], chunk):
        a = yt[:, j : j + chunk].astype(np.float64)
        b = yp[:, j : j + chunk].astype(np.float64)
        ss_res = ((a - b) ** 2).sum(0)
        ss_tot = ((a - a.mean(0)) ** 2).sum(0)
        with np.errstate(invalid="ignore", divide="ignore"):
            out[j : j + chunk] = np.where(ss_tot > 0, 1.0 - ss_res / ss_tot, np.nan)
    return out


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
    valid = np.isfinite(R[:, :, 0])
    if np.isfinite(R).sum(2).ravel().tolist() != (valid.ravel() * R.shape[2]).tolist():
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
    for j in range(0, R.shape[2], chunk):
        x = np.where(valid[:, :, None], R[:, :, j : j + chunk].astype(np.float64), 0.0)
        mean_i = x.sum(1) / counts[:, None]
        grand = x.sum((0, 1)) / n_all
        ms_b[j : j + chunk] = (counts[:, None] * (mean_i - grand) ** 2).sum(0) / df_b
        resid = np.where(valid[:, :, None], x - mean_i[:, None, :], 0.0)
        ms_w[j : j + chunk] = (resid**2).sum((0, 1)) / df_w
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


def _significance(values: np.ndarray, p: np.ndarray, q: float, n: int, test: str,
                  name: str) -> dict:
    mask = fdr_mask(p, q) & np.isfinite(values)
    thr = float(values[mask].min()) if mask.any() else float("nan")
    label = (f"FDR q < {q:g}: {name} >= {thr:.3f}, {int(mask.sum())} voxels" if mask.any()
             else f"FDR q < {q:g}: no voxel passes")
    return {"mask": mask, "p_values": p, "threshold": thr, "q": q, "n": n, "test": test,
            "label": label}
