"""Tests of lib.encoding on synthetic data with a known ground truth."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

pytest.importorskip("lib.ridge")
pytest.importorskip("lib.scoring")

from lib import encoding  # noqa: E402


def _layered_features(n, n_layers=5, width=40, seed=0):
    """Features of a random deep network: each layer a nonlinear mix of the previous one."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, width))
    layers = {0: x}
    for i in range(1, n_layers):
        w = rng.standard_normal((width, width)) / np.sqrt(width)
        x = np.tanh(1.5 * x @ w) + 0.3 * rng.standard_normal((n, width))
        layers[i] = x
    return layers


def test_voxels_peak_at_the_layer_that_drives_them():
    n_train, n_test, n_vox = 300, 100, 30
    ids = np.arange(1000, 1000 + n_train + n_test)
    feats = _layered_features(len(ids), seed=1)
    rng = np.random.default_rng(2)
    source = np.repeat([1, 2, 3], n_vox // 3)  # voxel v driven by layer source[v]
    Y = np.stack([feats[s] @ rng.standard_normal(feats[s].shape[1]) for s in source], axis=1)
    Y = Y / Y.std(axis=0) + 0.7 * rng.standard_normal(Y.shape)
    train, test = ids[:n_train], ids[n_train:]
    perm = rng.permutation(len(ids))  # feature rows in another order than the betas
    results = encoding.encode_layers({k: v[perm] for k, v in feats.items()}, ids[perm],
                                     Y[:n_train], train, Y[n_train:], test,
                                     alphas=np.logspace(-2, 4, 7), device="cpu")
    scores = np.stack([results[layer]["score"] for layer in sorted(results)])
    peak = scores.argmax(axis=0)
    assert np.mean(peak == source) >= 0.9
    for s in (1, 2, 3):
        assert np.bincount(peak[source == s], minlength=5).argmax() == s
    # the training (leave-one-out) criterion finds the same layers
    cv = np.stack([results[layer]["cv_score"] for layer in sorted(results)])
    assert np.mean(cv.argmax(axis=0) == source) >= 0.9


def test_test_images_never_choose_alphas_and_leaks_are_refused():
    rng = np.random.default_rng(0)
    X = rng.standard_normal((120, 10))
    Y = X @ rng.standard_normal((10, 6)) + rng.standard_normal((120, 6))
    ids = np.arange(120)
    a = encoding.encode_layers({0: X}, ids, Y[:80], ids[:80], Y[80:], ids[80:], device="cpu")
    Y2 = Y.copy()
    Y2[80:] = rng.standard_normal((40, 6)) * 100  # other test responses
    X2 = X.copy()
    X2[80:] *= 50  # and other test features
    b = encoding.encode_layers({0: X2}, ids, Y2[:80], ids[:80], Y2[80:], ids[80:], device="cpu")
    np.testing.assert_array_equal(a[0]["alpha"], b[0]["alpha"])
    np.testing.assert_allclose(a[0]["cv_score"], b[0]["cv_score"], rtol=1e-5)
    with pytest.raises(AssertionError, match="test images"):
        encoding.encode_layers({0: X}, ids, Y[:80], ids[:80], Y[70:], ids[70:], device="cpu")


def test_standardize_uses_training_statistics_only():
    rng = np.random.default_rng(0)
    Xtr, Xte = rng.normal(3, 2, (50, 4)), rng.normal(-5, 9, (20, 4))
    Xtr[:, 2] = 1.0  # constant feature
    a, b = encoding.standardize(Xtr, Xte)
    mean, std = Xtr.mean(0), Xtr.std(0)
    std[2] = 1.0
    np.testing.assert_allclose(a, (Xtr - mean) / std, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(b, (Xte - mean) / std, rtol=1e-5, atol=1e-5)


def test_reduce_features_fits_on_train():
    rng = np.random.default_rng(0)
    Xtr, Xte = rng.standard_normal((30, 50)), rng.standard_normal((10, 50))
    a, b = encoding.reduce_features(Xtr, Xte, 8, "pca")
    assert a.shape == (30, 8) and b.shape == (10, 8)
    from sklearn.decomposition import PCA

    ref = PCA(8, random_state=0).fit(Xtr)
    np.testing.assert_allclose(np.abs(b), np.abs(ref.transform(Xte)), rtol=1e-4, atol=1e-4)
    c, d = encoding.reduce_features(Xtr, Xte, 8, "random")
    assert c.shape == (30, 8) and d.shape == (10, 8)


def _scores_table():
    """A hand-made scores table: family A grows with size, B shrinks, one untrained A."""
    rows = []
    models = [("a1", "A", 10, True, 0.2), ("a2", "A", 20, True, 0.3), ("a3", "A", 40, True, 0.5),
              ("a1u", "A", 10, False, 0.05), ("b1", "B", 5, True, 0.4), ("b2", "B", 9, True, 0.1)]
    for name, fam, size, trained, peak in models:
        for layer in range(5):
            for roi, best in (("V1", 1), ("faces", 3), ("nsdgeneral", 2)):
                s = peak - 0.05 * abs(layer - best)
                rows.append({"model": name, "family": fam, "modality": "vision",
                             "n_params": size, "layer": layer, "roi": roi, "score": s,
                             "n_voxels": 10, "trained": trained, "n_layers": 5,
                             "depth": layer / 4, "cv_score": s + 0.01, "noise_ceiling": 0.8})
    return pd.DataFrame(rows)


def test_summaries_match_hand_computation():
    from scipy.stats import spearmanr

    df = _scores_table()
    rho = encoding.size_score_spearman(df).set_index("family")
    assert rho.loc["A", "rho"] == pytest.approx(spearmanr([10, 20, 40], [.3, .4, .6]).statistic)
    assert rho.loc["B", "rho"] == pytest.approx(-1.0)
    tvu = encoding.trained_vs_untrained(df).set_index("family")
    assert tvu.loc["A", "trained_mean"] == pytest.approx(np.mean([0.2, 0.3, 0.5]))
    assert tvu.loc["A", "untrained_mean"] == pytest.approx(0.05)
    assert tvu.loc["A", "pairs_won"] == 1 and tvu.loc["A", "n_pairs"] == 1
    peaks = encoding.peak_depths(df).set_index("model")
    assert peaks.loc["a2", "V1"] == pytest.approx(0.25)
    assert peaks.loc["a2", "faces"] == pytest.approx(0.75)
    assert peaks["early_before_category"].all()
    assert "a1u" not in peaks.index


def test_summarize_rois():
    values = np.array([1.0, 2.0, np.nan, 4.0])
    masks = {"x": np.array([1, 1, 1, 0], bool), "y": np.array([0, 0, 0, 1], bool)}
    out = encoding.summarize_rois(values, masks)
    assert out["x"] == (pytest.approx(1.5), 3)
    assert out["y"] == (pytest.approx(4.0), 1)


def test_load_zoo_resolves_relative_paths(tmp_path):
    (tmp_path / "vision" / "m1").mkdir(parents=True)
    zoo = [{"name": "m1", "path": "vision/m1", "family": "F", "modality": "vision",
            "n_params": 5, "trained": True},
           {"name": "l1", "path": "org/lm", "family": "L", "modality": "language"}]
    (tmp_path / "zoo.json").write_text(json.dumps(zoo))
    vis = encoding.load_zoo(tmp_path / "zoo.json", modality="vision")
    assert [e["name"] for e in vis] == ["m1"]
    assert vis[0]["path"] == str(tmp_path / "vision" / "m1")
    lang = encoding.load_zoo(tmp_path / "zoo.json", modality="language")
    assert lang[0]["path"] == "org/lm" and lang[0]["trained"] is True
    with pytest.raises(FileNotFoundError, match="zoo"):
        encoding.load_zoo(tmp_path / "missing.json")
