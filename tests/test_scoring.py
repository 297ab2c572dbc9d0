"""lib.scoring against NumPy / scikit-learn and simulated data with known SNR."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import stats
from sklearn.metrics import r2_score as sk_r2

from lib.scoring import (
    fdr_mask,
    noise_ceiling,
    noise_ceiling_null,
    noise_ceiling_pvalues,
    pearson_pvalues,
    pearson_r,
    r2_score,
    significant_noise_ceiling,
    significant_r,
)


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
    np.testing.assert_allclose(pearson_r(torch.from_numpy(a).float(), torch.from_numpy(b).float()),
                               ref, rtol=1e-5)
    a[:, 3] = 1.0
    assert np.isnan(pearson_r(a, b)[3])


def test_r2_matches_sklearn():
    a, b = _pairs(1)
    np.testing.assert_allclose(r2_score(a, b, chunk=5), sk_r2(a, b, multioutput="raw_values"),
                               rtol=1e-12)
    with pytest.raises(ValueError, match="shape"):
        r2_score(a, b[:, :3])


def _simulate(n_images, n_reps, sd_signal, sd_noise, seed=0):
    rng = np.random.default_rng(seed)
    sig = rng.standard_normal((n_images, 1, len(sd_signal))) * sd_signal
    return sig + rng.standard_normal((n_images, n_reps, len(sd_signal))) * sd_noise


def test_noise_ceiling_equals_direct_anova():
    R = _simulate(40, 3, np.array([0.2, 1.0, 2.0]), np.array([1.0, 1.0, 0.5]), seed=1)
    R[5, 2] = np.nan  # a missing repeat
    nc = noise_ceiling(R, n_average=3)
    for v in range(R.shape[2]):
        rows = [row[np.isfinite(row)] for row in R[:, :, v]]
        k = np.array([len(r) for r in rows])
        n_all = k.sum()
        grand = np.concatenate(rows).mean()
        ms_b = sum(len(r) * (r.mean() - grand) ** 2 for r in rows) / (len(rows) - 1)
        ms_w = sum(((r - r.mean()) ** 2).sum() for r in rows) / (n_all - len(rows))
        k0 = (n_all - (k**2).sum() / n_all) / (len(rows) - 1)
        var_signal = (ms_b - ms_w) / k0
        assert np.isclose(nc[v], var_signal / (var_signal + ms_w / 3), rtol=1e-10)
        # scipy's one-way ANOVA gives the same F test
        assert np.isclose(noise_ceiling_pvalues(R)[v], stats.f_oneway(*rows).pvalue, rtol=1e-8)


def test_noise_ceiling_recovers_known_signal():
    sd_signal = np.array([0.3, 1.0, 3.0])
    R = _simulate(4000, 3, sd_signal, np.ones(3), seed=2)
    for k in (1, 3):
        nc_true = sd_signal**2 / (sd_signal**2 + 1 / k)  # analytic value
        np.testing.assert_allclose(noise_ceiling(R, n_average=k), nc_true, atol=0.02)
    # the ceiling is the R^2 of the true signal predicting 3-trial averages
    rng = np.random.default_rng(3)
    sig = rng.standard_normal((20000, 1)) * sd_signal[1]
    avg = sig + rng.standard_normal((20000, 3)).mean(1, keepdims=True)
    assert np.isclose(pearson_r(avg, sig)[0] ** 2, noise_ceiling(R, n_average=3)[1], atol=0.02)
    pooled = noise_ceiling(R, n_average=3, pooled=True)
    s2 = (sd_signal**2).mean()
    assert np.isclose(pooled, s2 / (s2 + 1 / 3), atol=0.02)


def test_noise_ceiling_is_unbiased_without_signal():
    # 100 images x 3 repeats, like NSD's test set at small scale: no image information
    R = _simulate(100, 3, np.zeros(2000), np.ones(2000), seed=5)
    nc = noise_ceiling(R, n_average=3)
    # a ratio of noisy variances: the per-voxel mean sits slightly below zero (about
    # -2 / (n_images - 3)); the pooled (ROI) ceiling is the one to read
    assert -0.04 < np.mean(nc) < 0.0
    assert abs(noise_ceiling(R, n_average=3, pooled=True)) < 0.01
    assert np.mean(np.sqrt(np.clip(nc, 0, None))) > 0.1  # what per-voxel clipping would report
    null = noise_ceiling_null(R, n_average=3, n_permutations=20)
    assert null.shape == (20,) and np.abs(null).max() < 0.02
    sig = significant_noise_ceiling(R)
    assert sig["mask"].mean() < 0.01 and "F-test" in sig["test"]
    # with signal, shuffling image labels across repeats removes it
    S = _simulate(100, 3, np.full(50, 1.0), np.ones(50), seed=6)
    assert noise_ceiling(S, pooled=True) > 0.5
    assert np.abs(noise_ceiling_null(S, n_permutations=20)).max() < 0.1
    assert significant_noise_ceiling(S)["mask"].all()
    with pytest.raises(ValueError, match="repeat"):
        noise_ceiling(R[:, :1])
    R[0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="every voxel"):
        noise_ceiling(R)


def test_significant_r_null_and_signal():
    rng = np.random.default_rng(7)
    n = 100
    y = rng.standard_normal((n, 3000))
    null = pearson_r(y, rng.standard_normal((n, 3000)))
    res = significant_r(null, n)
    assert res["mask"].mean() < 0.002  # FDR over voxels: (almost) nothing survives
    strong = pearson_r(y[:, :300], y[:, :300] + rng.standard_normal((n, 300)))
    res = significant_r(np.concatenate([null, strong]), n)
    assert res["mask"][3000:].all() and res["mask"][:3000].mean() < 0.01
    assert 0.15 < res["threshold"] < 0.5 and "FDR q < 0.05" in res["test"]
    # one test at p < 0.05 with 100 images needs r of about 0.17
    assert np.isclose(pearson_pvalues(np.array([0.1654]), 100)[0], 0.05, atol=0.002)


def test_fdr_mask_matches_benjamini_hochberg():
    p = np.array([0.001, 0.008, 0.039, 0.041, 0.042, 0.06, 0.074, 0.205, np.nan])
    # BH at q = 0.05 over the 8 finite values: p_(k) <= 0.05 k / 8 up to k = 2
    np.testing.assert_array_equal(fdr_mask(p), [True, True] + [False] * 7)
    assert not fdr_mask(np.array([0.5, 0.9])).any()


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


def test_paired_bootstrap_mean_r_scores_each_resample_as_pearson_r_of_its_rows():
    """The resamples are scored from row counts; that must equal scoring the drawn rows."""
    from lib.scoring import paired_bootstrap_mean_r

    rng = np.random.default_rng(3)
    y = rng.standard_normal((9, 40))
    a = y + rng.standard_normal(y.shape)
    b = y + 3.0 * rng.standard_normal(y.shape)
    a[:, 5] = 2.0  # a constant prediction: NaN, left out of that resample's mean
    draws = np.random.default_rng(7)
    boots = []
    for _ in range(200):
        rows = draws.integers(0, 9, 9)
        with np.errstate(invalid="ignore", divide="ignore"):
            boots.append(np.nanmean(pearson_r(y[rows], a[rows]))
                         - np.nanmean(pearson_r(y[rows], b[rows])))
    res = paired_bootstrap_mean_r(y, a, b, n_boot=200, seed=7)
    assert res["ci_low"] == pytest.approx(np.percentile(boots, 2.5), abs=1e-12)
    assert res["ci_high"] == pytest.approx(np.percentile(boots, 97.5), abs=1e-12)
    assert res["p_value"] == np.mean(np.array(boots) <= 0)
