"""Tests of lib.encoding on synthetic data with a known ground truth."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from lib import encoding


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
                                     encoding.EncodingOptions(alphas=np.logspace(-2, 4, 7),
                                                              device="cpu"))
    scores = np.stack([results[layer]["score"] for layer in sorted(results)])
    peak = scores.argmax(axis=0)
    assert np.mean(peak == source) >= 0.9
    for s in (1, 2, 3):
        assert np.bincount(peak[source == s], minlength=5).argmax() == s
    # the training (leave-one-out) criterion finds the same layers
    val = np.stack([results[layer]["val_score"] for layer in sorted(results)])
    assert np.mean(val.argmax(axis=0) == source) >= 0.9
    assert np.abs(val.max(0) - scores.max(0)).mean() < 0.1  # held-out r on training images


def test_test_images_never_choose_alphas_and_leaks_are_refused():
    rng = np.random.default_rng(0)
    X = rng.standard_normal((120, 10))
    Y = X @ rng.standard_normal((10, 6)) + rng.standard_normal((120, 6))
    ids = np.arange(120)
    cpu = encoding.EncodingOptions(device="cpu")
    a = encoding.encode_layers({0: X}, ids, Y[:80], ids[:80], Y[80:], ids[80:], cpu)
    Y2 = Y.copy()
    Y2[80:] = rng.standard_normal((40, 6)) * 100  # other test responses
    X2 = X.copy()
    X2[80:] *= 50  # and other test features
    b = encoding.encode_layers({0: X2}, ids, Y2[:80], ids[:80], Y2[80:], ids[80:], cpu)
    np.testing.assert_array_equal(a[0]["alpha"], b[0]["alpha"])
    np.testing.assert_allclose(a[0]["val_score"], b[0]["val_score"], rtol=1e-5)
    with pytest.raises(AssertionError, match="test images"):
        encoding.encode_layers({0: X}, ids, Y[:80], ids[:80], Y[70:], ids[70:], cpu)


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
    """A hand-made scores table: family A grows with size, B shrinks, one untrained A.

    Validation scores follow the test scores (plus 0.01), so the selected layers are the
    ones a test-set choice would make."""
    rows = []
    models = [("a1", "A", 10, True, 0.2), ("a2", "A", 20, True, 0.3), ("a3", "A", 40, True, 0.5),
              ("a1u", "A", 10, False, 0.05), ("b1", "B", 5, True, 0.4), ("b2", "B", 9, True, 0.1)]
    for name, fam, size, trained, peak in models:
        for layer in range(5):
            for roi, best in (("V1", 1), ("faces", 3), ("nsdgeneral", 2)):
                s = peak - 0.05 * abs(layer - best)
                rows.append({"model": name, "family": fam, "modality": "vision",
                             "n_params": size, "layer": layer, "roi": roi, "score": s,
                             "val_score": s + 0.01, "n_voxels": 10, "trained": trained,
                             "n_layers": 5, "depth": layer / 4, "noise_ceiling": 0.8,
                             "noise_ceiling_null": 0.1})
    return encoding.mark_selected(pd.DataFrame(rows))


def test_selection_uses_val_score_not_the_test_score():
    df = _scores_table()
    assert df.groupby(["model", "roi"])["selected"].sum().eq(1).all()
    # make the last layer the best on test images only: nothing selected may change
    leak = df.copy()
    leak.loc[leak["layer"] == 4, "score"] = 0.99
    leak = encoding.mark_selected(leak)
    np.testing.assert_array_equal(leak["selected"], df["selected"])
    best = encoding.best_layers(leak)
    assert (best["layer"] != 4).all() and len(best) == 6 * 3
    # ... and moving the validation peak moves the selection
    moved = df.copy()
    moved.loc[moved["layer"] == 0, "val_score"] = 2.0
    assert (encoding.best_layers(encoding.mark_selected(moved))["layer"] == 0).all()
    with pytest.raises(KeyError, match="selected"):
        encoding.best_layers(df.drop(columns="selected"))


def test_fraction_of_ceiling_only_where_the_ceiling_beats_chance():
    rows = pd.DataFrame({"score": [0.2, 0.2], "noise_ceiling": [0.4, 0.1],
                         "noise_ceiling_null": [0.1, 0.15]})
    frac = encoding.fraction_of_ceiling(rows)
    assert frac[0] == pytest.approx(0.5) and np.isnan(frac[1])


@pytest.mark.parametrize("signal_sd", [0.0, 1.0])
def test_noise_ceilings_of_a_null_and_a_real_subject(signal_sd):
    rng = np.random.default_rng(3)
    ids = np.arange(500, 740)
    signal = signal_sd * rng.standard_normal((len(ids), 40))
    subject = _SyntheticSubject(None, None, ids[:140], ids[140:], signal, seed=4)
    masks = encoding.roi_masks(subject, ("V1", "faces", "nsdgeneral"))
    out = encoding.noise_ceilings(subject, masks, "test", n_permutations=50)
    assert out["n_average"] == 3 and out["n_images"] == 100
    for roi in masks:
        if signal_sd == 0:  # pooled and unclipped: at chance, not above it
            assert out["roi"][roi] <= out["roi_null"][roi] + 0.05
            assert out["roi"][roi] < 0.2
        else:  # NC of 3 repeats with SNR 1 / 0.8^2
            expected = np.sqrt(1 / (1 + 0.64 / 3))
            assert out["roi"][roi] == pytest.approx(expected, abs=0.05)
            assert out["roi_null"][roi] < 0.3


def test_summaries_match_hand_computation():
    from scipy.stats import spearmanr

    df = _scores_table()
    rho = encoding.size_score_spearman(df).set_index("family")
    assert rho.loc["A", "rho"] == pytest.approx(spearmanr([10, 20, 40], [.3, .4, .6]).statistic)
    assert rho.loc["B", "rho"] == pytest.approx(-1.0)
    # exact one-sided permutation p over the 3! orderings: a perfect order is 1 in 6
    assert rho.loc["A", "p_value"] == pytest.approx(1 / 6)
    assert rho.loc["B", "p_value"] == pytest.approx(1.0)
    tvu = encoding.trained_vs_untrained(df)
    assert len(tvu) == 1  # one untrained model; B has none
    row = tvu.iloc[0]
    assert (row["trained"], row["untrained"]) == ("a1", "a1u")  # same size
    assert row["trained_score"] == pytest.approx(0.2)
    assert row["untrained_score"] == pytest.approx(0.05)
    assert row["difference"] == pytest.approx(0.15)
    assert row["trained_layer"] == 2
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


# --------------------------------------------------------------------------------------
# End to end: a tiny random ViT and GPT-2, a synthetic subject whose voxels the ViT drives
# --------------------------------------------------------------------------------------

class _SyntheticSubject:
    """Test data with the PreparedSubject interface: V1 voxels follow the ViT's layer 1,
    face voxels its layer 3; three noisy repetitions per image."""

    def __init__(self, images, captions, train_ids, test_ids, signal, seed=0):
        rng = np.random.default_rng(seed)
        self._images, self._captions = images, captions
        self._ids = {"train": train_ids, "test": test_ids}
        n_vox = signal.shape[1]
        self.voxel_ijk = np.stack(np.unravel_index(np.arange(n_vox), (4, 4, 4)), axis=1)
        self.affine, self.grid_shape, self.n_voxels = np.eye(4), (4, 4, 4), n_vox
        self._reps = signal[:, None, :] + 0.8 * rng.standard_normal((len(signal), 3, n_vox))
        self._row = {int(k): i for i, k in enumerate(np.concatenate([train_ids, test_ids]))}
        half = n_vox // 2
        self._masks = {"V1": np.arange(n_vox) < half, "faces": np.arange(n_vox) >= half,
                       "nsdgeneral": np.ones(n_vox, bool)}

    def _select(self, split):
        ids = self._ids[split]
        return self._reps[[self._row[int(k)] for k in ids]], ids

    def averaged_betas(self, split, roi=None):
        reps, ids = self._select(split)
        betas = reps.mean(axis=1).astype(np.float32)
        return (betas if roi is None else betas[:, roi]), ids

    def repeats(self, split, roi=None):
        return self._select(split)[0].astype(np.float32)

    def roi_mask(self, name):
        if name not in self._masks:
            raise KeyError(name)
        return self._masks[name]

    def images(self, ids):
        return self._images[np.asarray(ids) - 500]

    def captions(self, ids):
        return [self._captions[int(k) - 500] for k in ids]


def _run_zoo(subject, zoo, out, rois, **options):
    """The chapter's steps (notebooks/02_convergence.ipynb) over the lib pieces: the split, ROI
    masks and ceilings, one model at a time with failures recorded, the tables written."""
    from lib.io import atomic_path

    options = encoding.EncodingOptions(**options)
    encoding.check_quantization(zoo, options)
    Y_train, train_ids = subject.averaged_betas("train")
    Y_test, test_ids = subject.averaged_betas("test")
    masks = encoding.roi_masks(subject, rois)
    ceilings = encoding.noise_ceilings(subject, masks, "test", seed=options.seed)
    data = encoding.ConvergenceData(subject, Y_train, train_ids, Y_test, test_ids, masks,
                                    ceilings, cache_dir=out / "features")
    results, failures = {}, []
    for entry in zoo:
        try:
            encoding.check_available(entry)
            results[entry["name"]] = encoding.convergence_one_model(entry, data, options)
        except AssertionError:
            raise
        except Exception as err:  # noqa: BLE001 - recorded, as the chapter does
            failures.append(encoding.failure_row(entry, err))
    encoding.write_failed_models(out, failures)
    scores = encoding.score_table(results, failures)
    with atomic_path(out / "scores.csv") as tmp:
        scores.to_csv(tmp, index=False)
    encoding.write_voxel_scores(out / "voxel_scores.h5", subject,
                                {name: r.maps for name, r in results.items()}, ceilings, zoo,
                                n_test=len(test_ids))
    return scores, options


def test_convergence_data_refuses_test_images_among_training_images():
    ids = np.arange(10)
    with pytest.raises(AssertionError, match="test images are among the training images"):
        encoding.ConvergenceData(None, np.zeros((6, 2)), ids[:6], np.zeros((5, 2)), ids[5:],
                                 {}, {}, cache_dir="features")


def test_convergence_end_to_end(tmp_path):
    import h5py
    import torch
    import transformers

    sys_path = pytest.importorskip("test_features")  # tiny-model builders
    from lib.features import hidden

    vit = sys_path._save_vision(tmp_path, "vit", transformers.ViTConfig(
        image_size=32, patch_size=8, hidden_size=24, num_hidden_layers=3,
        num_attention_heads=2, intermediate_size=32, initializer_range=0.5))
    torch.manual_seed(0)
    lm = transformers.AutoModelForCausalLM.from_config(transformers.GPT2Config(
        vocab_size=40, n_positions=32, n_embd=16, n_layer=2, n_head=2))
    lm.save_pretrained(tmp_path / "gpt")
    sys_path._tokenizer().save_pretrained(tmp_path / "gpt")

    n = 240
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
    captions = sys_path._captions(range(n))
    ids = np.arange(500, 500 + n)
    feats = hidden.vision_layer_features(vit, lambda k: images[np.asarray(k) - 500], ids,
                                         tmp_path / "truth.h5", device="cpu")
    n_vox = 20
    drive = [feats[1]] * (n_vox // 2) + [feats[3]] * (n_vox // 2)
    signal = np.stack([(f - f.mean(0)) / (f.std(0) + 1e-6) @ rng.standard_normal(f.shape[1])
                       for f in drive], axis=1)
    signal /= signal.std(axis=0)
    subject = _SyntheticSubject(images, captions, ids[:180], ids[180:], signal)
    zoo = [{"name": "vit", "path": str(vit), "family": "ViT", "modality": "vision",
            "trained": True},
           {"name": "gpt", "path": str(tmp_path / "gpt"), "family": "GPT", "modality": "language",
            "n_params": 123, "trained": False}]
    out = tmp_path / "convergence"
    scores, options = _run_zoo(subject, zoo, out, ("V1", "faces", "nsdgeneral", "words"),
                               alphas=np.logspace(-2, 4, 7), device="cpu", batch_size=64)
    on_disk = pd.read_csv(out / "scores.csv")
    assert list(on_disk.columns[:10]) == encoding.SCORE_COLUMNS
    assert on_disk.groupby(["model", "roi"])["selected"].sum().eq(1).all()
    assert len(on_disk) == len(scores) == (4 + 3) * 3  # (ViT 4 + GPT 3 layers) x 3 ROIs
    assert set(on_disk["roi"]) == {"V1", "faces", "nsdgeneral"}  # no voxels: words skipped
    vit_rows = on_disk[on_disk["model"] == "vit"]
    assert vit_rows["n_params"].iloc[0] == sum(p.numel() for p in transformers.AutoModel
                                               .from_pretrained(vit).parameters())
    peaks = encoding.peak_depths(on_disk).set_index("model")
    assert peaks.loc["vit", "V1"] == pytest.approx(1 / 3)
    assert peaks.loc["vit", "faces"] == pytest.approx(1.0)
    assert vit_rows["score"].max() > 0.5
    # the random captions carry no information about these voxels
    assert on_disk[on_disk["model"] == "gpt"]["score"].max() < 0.4
    assert (on_disk["noise_ceiling"] > 0.5).all()
    assert (on_disk["noise_ceiling"] > on_disk["noise_ceiling_null"]).all()
    # the validation score ranks vit's layers like the test score does
    v = vit_rows[vit_rows["roi"] == "V1"]
    assert v.loc[v["val_score"].idxmax(), "layer"] == v.loc[v["score"].idxmax(), "layer"]
    with h5py.File(out / "voxel_scores.h5", "r") as f:
        assert f["models/vit/score"].shape == (4, n_vox)
        assert f["noise_ceiling"].shape == (n_vox,)
    maps = encoding.read_voxel_scores(out / "voxel_scores.h5", "vit")
    assert maps["best_score"].shape == (n_vox,)
    # the bootstrap refits from the caches: same difference, an interval around it
    face = on_disk[on_disk["roi"] == "faces"].set_index(["model", "layer"])["score"]
    table = pd.DataFrame([{"trained": "vit", "untrained": "gpt", "trained_layer": 3,
                           "untrained_layer": 1}])
    boot = encoding.bootstrap_trained_vs_untrained(
        table, subject, zoo, out / "features", options, roi="faces", n_boot=200).iloc[0]
    expected = face[("vit", 3)] - face[("gpt", 1)]
    assert boot["ci_low"] < expected < boot["ci_high"]
    assert boot["ci_low"] > 0.2 and boot["p_value"] == 0.0


# --------------------------------------------------------------------------------------
# Robust zoos: a model that cannot load is reported, the others are analysed
# --------------------------------------------------------------------------------------

def _tiny_subject_and_vit(tmp_path):
    import transformers

    helpers = pytest.importorskip("test_features")
    vit = helpers._save_vision(tmp_path, "vit", transformers.ViTConfig(
        image_size=32, patch_size=8, hidden_size=24, num_hidden_layers=2,
        num_attention_heads=2, intermediate_size=32))
    n, n_vox = 60, 6
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
    ids = np.arange(500, 500 + n)
    subject = _SyntheticSubject(images, helpers._captions(range(n)), ids[:45], ids[45:],
                                rng.standard_normal((n, n_vox)))
    return subject, vit


def test_broken_zoo_entries_are_reported_and_the_others_run(tmp_path, monkeypatch):
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))  # no login, empty hub cache
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    subject, vit = _tiny_subject_and_vit(tmp_path)
    corrupt = tmp_path / "corrupt"
    corrupt.mkdir()
    (corrupt / "config.json").write_text("{not json")
    zoo = encoding.load_zoo([
        {"name": "vit", "path": str(vit), "family": "ViT"},
        {"name": "corrupt", "path": str(corrupt), "family": "ViT"},
        {"name": "absent", "path": str(tmp_path / "no-such-model"), "family": "ViT"},
        {"name": "llama", "path": "meta-llama/Llama-2-7b-hf", "family": "LLaMA",
         "modality": "language", "gated": True},
    ], modality=None)
    out = tmp_path / "convergence"
    scores, _ = _run_zoo(subject, zoo, out, ("V1", "nsdgeneral"), alphas=[1.0, 100.0],
                         device="cpu")
    assert set(scores["model"]) == {"vit"}
    failed = encoding.read_failed_models(out).set_index("model")
    assert list(failed.index) == ["corrupt", "absent", "llama"]
    assert failed.loc["llama", "status"] == "skipped"
    assert "hf auth login" in failed.loc["llama", "hint"]
    assert failed.loc["corrupt", "status"] == "failed"
    assert "config" in failed.loc["corrupt", "hint"]
    assert failed.loc["absent", "error"].startswith("FileNotFoundError")
    assert "fix the zoo path" in failed.loc["absent", "hint"] or "zoo" in failed.loc[
        "absent", "error"]
    # a zoo where every model fails stops with the list of failures
    with pytest.raises(RuntimeError, match="No model of the zoo ran"):
        _run_zoo(subject, zoo[1:3], tmp_path / "none", ("V1",), alphas=[1.0], device="cpu")


def test_every_model_ran_gives_an_empty_failure_table(tmp_path):
    subject, vit = _tiny_subject_and_vit(tmp_path)
    zoo = encoding.load_zoo([{"name": "vit", "path": str(vit), "family": "ViT"}])
    _run_zoo(subject, zoo, tmp_path, ("V1",), alphas=[1.0], device="cpu")
    failed = encoding.read_failed_models(tmp_path)
    assert failed.empty and list(failed.columns) == encoding.FAILED_COLUMNS


def test_quantization_is_refused_on_cpu_before_any_work():
    zoo = [{"name": "lm", "path": "org/lm", "family": "L", "modality": "language"}]
    with pytest.raises(ValueError, match="needs a CUDA GPU"):
        encoding.check_quantization(zoo, encoding.EncodingOptions(device="cpu", quantize="8bit"))
    with pytest.raises(ValueError, match="expected one of"):
        encoding.check_quantization(zoo, encoding.EncodingOptions(device="cpu", quantize="3bit"))


def test_load_zoo_mixes_zoo_files_and_entries(tmp_path):
    (tmp_path / "vision" / "m1").mkdir(parents=True)
    (tmp_path / "zoo.json").write_text(json.dumps(
        [{"name": "m1", "path": "vision/m1", "family": "F", "modality": "vision"}]))
    zoo = encoding.load_zoo([tmp_path / "zoo.json",
                             {"name": "extra", "path": "org/x", "family": "G", "gated": True}],
                            modality="vision")
    assert [e["name"] for e in zoo] == ["m1", "extra"]
    assert zoo[0]["path"] == str(tmp_path / "vision" / "m1") and zoo[1]["gated"] is True
