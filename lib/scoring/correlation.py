"""Pearson r and R^2 of every target, and a paired bootstrap of the difference in mean r."""

from __future__ import annotations

import numpy as np

_CHUNK = 8192


def _as_np(a) -> np.ndarray:
    if hasattr(a, "detach"):  # a torch tensor (torch is not imported for NumPy inputs)
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
    mean_r_a, mean_r_b = _resampled_mean_r(counts, y, (a, b))
    diff = mean_r_a - mean_r_b
    boots = diff[:-1]
    tail = (1 - ci) / 2 * 100
    return {"difference": float(diff[-1]),
            "ci_low": float(np.percentile(boots, tail)),
            "ci_high": float(np.percentile(boots, 100 - tail)),
            "p_value": float(np.mean(boots <= 0))}


def _resampled_mean_r(counts, y_true, predictions, chunk: int = 2048) -> list[np.ndarray]:
    """Mean over targets of the Pearson r of every resample given as row counts.

    Parameters
    ----------
    counts : ndarray of shape (n_resamples, n_samples)
        How often each sample is drawn in each resample (rows sum to the resample size).
    y_true : ndarray of shape (n_samples, n_targets)
    predictions : sequence of ndarrays of shape (n_samples, n_targets)
        Scored against the same ``y_true`` (its resampled sums are computed once).

    Returns
    -------
    mean_r : list of ndarrays of shape (n_resamples,), one per prediction
        ``nanmean`` over targets of each resample's r (NaN where a column is constant in it).
    """
    def centred(x, j):  # on the full sample: r is unchanged, the sums lose less
        x = x[:, j : j + chunk].astype(np.float64)
        return x - x.mean(0)

    size = counts.sum(1, keepdims=True)
    total = [np.zeros(counts.shape[0]) for _ in predictions]
    finite = [np.zeros(counts.shape[0]) for _ in predictions]
    for j in range(0, y_true.shape[1], chunk):
        a = centred(y_true, j)
        sa = counts @ a
        var_a = counts @ (a * a) - sa * sa / size
        for k, pred in enumerate(predictions):
            b = centred(pred, j)
            sb = counts @ b
            cov = counts @ (a * b) - sa * sb / size
            var_b = counts @ (b * b) - sb * sb / size
            den = np.sqrt(np.clip(var_a, 0, None) * np.clip(var_b, 0, None))
            with np.errstate(invalid="ignore", divide="ignore"):
                r = np.where(den > 0, cov / den, np.nan)
            total[k] += np.nansum(r, 1)
            finite[k] += np.isfinite(r).sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return [t / f for t, f in zip(total, finite)]


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
