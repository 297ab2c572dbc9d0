"""lib.scoring against NumPy / scikit-learn and simulated data with known SNR."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import stats
from sklearn.metrics import r2_score as sk_r2

from lib.scoring import ncsnr, noise_ceiling, pearson_r, r2_score, split_half_reliability


def _pairs(seed=0, n=50, t=23):
    rng = np.random.default_rng(seed)
    a = rng.standard_normal((n, t))
    b = 0.5 * a + rng.standard_normal((n, t)) + rng.uniform(-3, 3, t)
    return a, b


def test_pearson_matches_numpy_and_scipy():
    a, b = _pairs()
    r = pearson_r(a, b, chunk=4)  # several chunks
    ref = np.array([np.corrcoef(a[:, j], b[:, j])[0, 1] for j in range(a.shape[1])])
    np.testing.assert_allclose(r, ref, rtol=1e-12)
    assert np.isclose(pearson_r(a[:, 0], b[:, 0])[0], stats.pearsonr(a[:, 0], b[:, 0])[0])
    np.testing.assert_allclose(pearson_r(torch.from_numpy(a).float(), torch.from_numpy(b).float()), ref, rtol=1e-5)
    a[:, 3] = 1.0
    assert np.isnan(pearson_r(a, b)[3])


def test_r2_matches_sklearn():
    a, b = _pairs(1)
    np.testing.assert_allclose(r2_score(a, b, chunk=5), sk_r2(a, b, multioutput="raw_values"), rtol=1e-12)
    with pytest.raises(ValueError, match="shape"):
        r2_score(a, b[:, :3])


def _simulate(n_images, n_reps, sd_signal, sd_noise, seed=0):
    rng = np.random.default_rng(seed)
    sig = rng.standard_normal((n_images, 1, len(sd_signal))) * sd_signal
    return sig + rng.standard_normal((n_images, n_reps, len(sd_signal))) * sd_noise


def test_noise_ceiling_equals_direct_computation():
    R = _simulate(40, 3, np.array([0.2, 1.0, 2.0]), np.array([1.0, 1.0, 0.5]), seed=1)
    R[5, 2, 0] = np.nan  # a missing repeat
    nc = noise_ceiling(R, n_average=3)
    for v in range(R.shape[2]):
        x = R[:, :, v]
        var_noise = np.mean([np.var(row[np.isfinite(row)], ddof=1) for row in x])
        flat = x[np.isfinite(x)]
        snr = np.sqrt(max(np.var(flat, ddof=1) - var_noise, 0)) / np.sqrt(var_noise)
        assert np.isclose(ncsnr(R)[v], snr, rtol=1e-10)
        assert np.isclose(nc[v], snr**2 / (snr**2 + 1 / 3), rtol=1e-10)
    # NSD convention: z-scored betas, total variance fixed at 1
    z = noise_ceiling(R, n_average=1, total_var=1.0)
    var_noise0 = np.mean([np.var(row[np.isfinite(row)], ddof=1) for row in R[:, :, 0]])
    s2 = max(1 - var_noise0, 0) / var_noise0
    assert np.isclose(z[0], s2 / (s2 + 1))


def test_noise_ceiling_recovers_known_snr():
    sd_signal = np.array([0.0, 0.3, 1.0, 3.0])
    sd_noise = np.ones(4)
    R = _simulate(4000, 3, sd_signal, sd_noise, seed=2)
    snr_true = sd_signal / sd_noise
    np.testing.assert_allclose(ncsnr(R)[1:], snr_true[1:], rtol=0.05)
    assert ncsnr(R)[0] < 0.1
    for k in (1, 3):
        nc_true = snr_true**2 / (snr_true**2 + 1 / k)
        nc = noise_ceiling(R, n_average=k)
        np.testing.assert_allclose(nc, nc_true, atol=0.02)
        assert np.all((nc >= 0) & (nc <= 1))
    # the ceiling is the R^2 of the true signal predicting 3-trial averages
    rng = np.random.default_rng(3)
    sig = rng.standard_normal((20000, 1)) * sd_signal[2]
    avg = sig + rng.standard_normal((20000, 3)).mean(1, keepdims=True)
    assert np.isclose(pearson_r(avg, sig)[0] ** 2, noise_ceiling(R, n_average=3)[2], atol=0.02)


def test_split_half_reliability():
    sd_signal = np.array([0.5, 1.0, 2.0])
    R = _simulate(3000, 4, sd_signal, np.ones(3), seed=4)
    rel = split_half_reliability(R, n_splits=5)
    expected = sd_signal**2 / (sd_signal**2 + 1 / 4)  # reliability of the 4-repeat mean
    np.testing.assert_allclose(rel, expected, atol=0.03)
    raw = split_half_reliability(R, n_splits=5, spearman_brown=False)
    np.testing.assert_allclose(raw, sd_signal**2 / (sd_signal**2 + 1 / 2), atol=0.03)
    with pytest.raises(ValueError, match="repeat"):
        split_half_reliability(R[:, :1])


def test_paired_bootstrap_mean_r_orders_models_and_covers_the_difference():
    from lib.scoring import paired_bootstrap_mean_r

    rng = np.random.default_rng(0)
    y = rng.standard_normal((100, 30))
    good = y + 0.5 * rng.standard_normal(y.shape)
    poor = y + 2.0 * rng.standard_normal(y.shape)
    res = paired_bootstrap_mean_r(y, good, poor, n_boot=300, seed=1)
    full = pearson_r(y, good).mean() - pearson_r(y, poor).mean()
    assert res["difference"] == pytest.approx(full)
    assert 0 < res["ci_low"] < full < res["ci_high"] and res["p_value"] == 0.0
    swapped = paired_bootstrap_mean_r(y, poor, good, n_boot=300, seed=1)
    assert swapped["difference"] == pytest.approx(-full) and swapped["p_value"] == 1.0
    same = paired_bootstrap_mean_r(y, good, good, n_boot=50)
    assert same["difference"] == same["ci_low"] == same["ci_high"] == 0.0
    assert paired_bootstrap_mean_r(y, good, poor, n_boot=300, seed=1) == res  # seeded
