"""Per-target prediction scores and noise ceilings.

All scores are vectorised over targets (voxels, feature dimensions) and computed in
float64 over chunks of targets, so (n_samples, 100k targets) arrays never need a float64
copy at once. Inputs may be NumPy arrays or torch tensors; outputs are NumPy arrays.

Noise ceiling (NSD, Allen et al. 2022, "A massive 7T fMRI dataset...", Methods
"Noise ceiling"): with betas of ``n_images`` images each seen ``n_reps`` times,

- noise variance ``var_noise`` = mean over images of the variance across repeats
  (ddof=1);
- signal variance ``var_signal = var_total - var_noise`` where ``var_total`` is the
  variance of all single-trial responses (NSD z-scores betas per session so that
  ``var_total`` = 1 and writes ``1 - sd_noise^2``);
- ``ncsnr = sqrt(max(var_signal, 0)) / sd_noise``;
- noise ceiling for responses averaged over ``n_average`` trials:
  ``NC = ncsnr^2 / (ncsnr^2 + 1 / n_average)``.

NSD reports ``100 * NC`` in percent of explainable variance; :func:`noise_ceiling`
returns the fraction in [0, 1], which bounds the test-set R^2 of a model predicting
responses averaged over ``n_average`` repeats (its square root bounds Pearson r).
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
        raise ValueError(f"y_true has shape {yt.shape} but y_pred has shape {yp.shape}; they must match.")
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

    def mean_r(idx):
        return float(np.nanmean(pearson_r(y[idx], a[idx])) - np.nanmean(pearson_r(y[idx], b[idx])))

    rng = np.random.default_rng(seed)
    boots = np.array([mean_r(rng.integers(0, n, n)) for _ in range(int(n_boot))])
    tail = (1 - ci) / 2 * 100
    return {"difference": mean_r(np.arange(n)),
            "ci_low": float(np.percentile(boots, tail)),
            "ci_high": float(np.percentile(boots, 100 - tail)),
            "p_value": float(np.mean(boots <= 0))}


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


def ncsnr(repeats, total_var=None, chunk: int = _CHUNK) -> np.ndarray:
    """NSD's noise-ceiling signal-to-noise ratio of every voxel.

    Parameters
    ----------
    repeats : ndarray of shape (n_images, n_reps, n_voxels)
        Single-trial responses; NaN marks a missing repeat (images with fewer than two
        valid repeats are ignored for the noise variance).
    total_var : float or None
        Variance of single-trial responses. None estimates it from ``repeats`` (pooled
        over all valid trials); NSD uses 1 because its betas are z-scored per session.

    Returns
    -------
    ncsnr : ndarray of shape (n_voxels,)
    """
    R = _check_repeats(repeats)
    out = np.empty(R.shape[2], dtype=np.float64)
    for j in range(0, R.shape[2], chunk):
        x = R[:, :, j : j + chunk].astype(np.float64)
        valid = np.isfinite(x)
        n_valid = valid.sum(1)  # (n_images, v)
        xz = np.where(valid, x, 0.0)
        mean_i = xz.sum(1) / np.maximum(n_valid, 1)
        ss = (np.where(valid, x - mean_i[:, None, :], 0.0) ** 2).sum(1)
        use = n_valid >= 2
        var_i = np.where(use, ss / np.maximum(n_valid - 1, 1), 0.0)
        with np.errstate(invalid="ignore", divide="ignore"):
            var_noise = var_i.sum(0) / use.sum(0)
            if total_var is None:
                n_all = valid.sum((0, 1))
                mu = xz.sum((0, 1)) / n_all
                tv = (np.where(valid, x - mu, 0.0) ** 2).sum((0, 1)) / (n_all - 1)
            else:
                tv = float(total_var)
            var_signal = np.maximum(tv - var_noise, 0.0)
            out[j : j + chunk] = np.sqrt(var_signal) / np.sqrt(var_noise)
    return out


def noise_ceiling(repeats, n_average: int | None = None, total_var=None) -> np.ndarray:
    """Noise ceiling (fraction of explainable variance) from repeated presentations.

    ``NC = ncsnr^2 / (ncsnr^2 + 1/n_average)`` with NSD's ``ncsnr`` (see :func:`ncsnr`
    and the module docstring). NSD reports ``100 * NC`` (percent); this returns the
    fraction in [0, 1].

    Parameters
    ----------
    repeats : ndarray of shape (n_images, n_reps, n_voxels)
    n_average : int or None
        Number of trials averaged in the data the model is scored on (NSD's test-set
        analyses average 3). None uses ``n_reps``.
    total_var : float or None
        Passed to :func:`ncsnr`.

    Returns
    -------
    nc : ndarray of shape (n_voxels,)
    """
    R = _check_repeats(repeats)
    n_avg = R.shape[1] if n_average is None else int(n_average)
    if n_avg < 1:
        raise ValueError(f"n_average must be a positive number of trials; got {n_average!r}.")
    snr2 = ncsnr(R, total_var=total_var) ** 2
    with np.errstate(invalid="ignore"):
        return snr2 / (snr2 + 1.0 / n_avg)


def split_half_reliability(repeats, n_splits: int = 20, spearman_brown: bool = True, seed: int = 0) -> np.ndarray:
    """Split-half reliability of every voxel's image responses.

    The repeats of each image are split at random into two halves (the same split for
    all images, ``n_splits`` times); the Pearson correlation across images between the
    two halves' means is averaged over splits and, with ``spearman_brown``, stepped up to
    the full number of repeats: ``2 r / (1 + r)``.

    Parameters
    ----------
    repeats : ndarray of shape (n_images, n_reps, n_voxels), n_reps >= 2
    n_splits : int
    spearman_brown : bool
    seed : int

    Returns
    -------
    reliability : ndarray of shape (n_voxels,)
    """
    R = _check_repeats(repeats).astype(np.float64)
    rng = np.random.default_rng(seed)
    k = R.shape[1]
    rs = []
    for _ in range(n_splits):
        perm = rng.permutation(k)
        a = np.nanmean(R[:, perm[: k // 2]], axis=1)
        b = np.nanmean(R[:, perm[k // 2 :]], axis=1)
        rs.append(pearson_r(a, b))
    r = np.mean(rs, axis=0)
    if spearman_brown:
        with np.errstate(invalid="ignore", divide="ignore"):
            r = 2 * r / (1 + r)
    return r
