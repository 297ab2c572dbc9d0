"""Stage 1: the fMRI -> query-token decoder, its files, and the fit on a prepared subject."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from lib.decoding.decoder import (
    QueryTokenDecoder,
    load_decoder,
    read_predictions,
    write_predictions,
)
from lib.decoding.stage1 import average_by_id, cosine_matrix


def _random_decoder(block_sizes=(6, 6), n_query=3, hidden=5, seed=0):
    dec = QueryTokenDecoder(list(block_sizes), n_query, hidden, {"memory_size": len(block_sizes),
                                                                 "roi": None})
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        dec.weight.copy_(torch.randn(dec.weight.shape, generator=g))
        dec.bias.copy_(torch.randn(dec.bias.shape, generator=g))
    return dec


def test_forward_is_the_linear_map_on_concatenated_blocks():
    dec = _random_decoder()
    rng = np.random.default_rng(0)
    blocks = [rng.normal(size=(4, 6)).astype(np.float32) for _ in range(2)]
    W, b = dec.weight.detach().numpy(), dec.bias.detach().numpy()
    expected = (np.hstack(blocks) @ W.T + b).reshape(4, 3, 5)
    np.testing.assert_allclose(dec.predict(blocks, batch_size=3), expected, rtol=1e-5, atol=1e-5)


def test_safetensors_round_trip(tmp_path):
    dec = _random_decoder()
    dec.save(tmp_path / "run")
    assert (tmp_path / "run" / "decoder.safetensors").exists()
    settings = json.loads((tmp_path / "run" / "settings.json").read_text())
    assert settings["block_sizes"] == [6, 6] and settings["memory_size"] == 2
    loaded = load_decoder(tmp_path / "run")
    assert loaded.settings == {"memory_size": 2, "roi": None}
    x = [np.ones((2, 6), np.float32), np.arange(12, dtype=np.float32).reshape(2, 6)]
    np.testing.assert_array_equal(loaded.predict(x), dec.predict(x))


def test_wrong_blocks_are_a_clear_error():
    with pytest.raises(ValueError, match="same ROI and memory window"):
        _random_decoder().predict([np.ones((2, 6), np.float32)])


def test_load_missing_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="03_alignment_ridge"):
        load_decoder(tmp_path)


def test_average_by_id_matches_pandas():
    rng = np.random.default_rng(0)
    ids = rng.integers(0, 5, 40)
    vals = rng.normal(size=(40, 2, 3))
    means, uniq = average_by_id(vals, ids)
    expected = pd.DataFrame(vals.reshape(40, -1)).groupby(ids).mean()
    np.testing.assert_array_equal(uniq, expected.index.to_numpy())
    np.testing.assert_allclose(means.reshape(len(uniq), -1), expected.to_numpy(), rtol=1e-6)


def test_predictions_file_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    p = write_predictions(tmp_path / "predictions.h5", rng.normal(size=(3, 2, 4)), [5, 6, 7],
                          rng.normal(size=(4, 2, 4)), [1, 2, 3, 4])
    out = read_predictions(p.parent)
    assert out["test_pred"].shape == (3, 2, 4) and out["test_pred"].dtype == np.float32
    np.testing.assert_array_equal(out["train_ids"], [1, 2, 3, 4])


def test_cosine_matrix_matches_sklearn():
    from sklearn.metrics.pairwise import cosine_similarity

    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(4, 2, 3)), rng.normal(size=(5, 2, 3))
    np.testing.assert_allclose(cosine_matrix(a, b), cosine_similarity(a.reshape(4, -1),
                                                                      b.reshape(5, -1)))


# --- the fit, on the micro toy world -------------------------------------------------------

@pytest.fixture(scope="module")
def micro_subject(micro_root, tmp_path_factory):
    from lib.nsd import PreparedSubject, prepare_subject

    out = tmp_path_factory.mktemp("prepared")
    return PreparedSubject(prepare_subject(micro_root / "nsd", 1, out))


def _targets(subject, n_query=2, hidden=3, seed=0):
    """Synthetic 'Q-Former features' that depend linearly on each image's averaged betas."""
    ids = np.union1d(subject.image_ids("train"), subject.image_ids("test"))
    rng = np.random.default_rng(seed)
    return rng.normal(size=(len(ids), n_query, hidden)).astype(np.float32), ids


def test_fit_matches_sklearn_ridge_at_the_chosen_alphas(micro_subject):
    from sklearn.linear_model import Ridge

    from lib.decoding.stage1 import fit_stage1

    feats, ids = _targets(micro_subject)
    alphas = [1.0, 100.0, 1e4]
    res = fit_stage1(micro_subject, feats, ids, alphas=alphas, device="cpu")
    X, x_ids = micro_subject.averaged_betas("train")
    assert np.intersect1d(x_ids, micro_subject.image_ids("test")).size == 0
    Y = feats[np.searchsorted(ids, x_ids)].reshape(len(x_ids), -1)
    W = res.decoder.weight.detach().numpy()
    for t in range(Y.shape[1]):
        sk = Ridge(alpha=res.best_alphas[t]).fit(X, Y[:, t])
        np.testing.assert_allclose(W[t], sk.coef_, rtol=1e-3, atol=1e-4)
    Xt, t_ids = micro_subject.averaged_betas("test")
    np.testing.assert_array_equal(res.test_ids, t_ids)
    np.testing.assert_allclose(res.test_pred, res.decoder.predict(Xt), rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(res.test_true, feats[np.searchsorted(ids, t_ids)])


def test_memory_window_fit_and_repeat_averaging(micro_subject):
    from sklearn.linear_model import Ridge

    from lib.decoding.stage1 import fit_stage1

    feats, ids = _targets(micro_subject, seed=1)
    res = fit_stage1(micro_subject, feats, ids, memory_size=2, memory_direction="past",
                     alphas=[10.0], device="cpu")
    blocks, trial_ids = micro_subject.memory_windows("train", 2, "past")
    assert res.decoder.block_sizes == [b.shape[1] for b in blocks]
    Y = feats[np.searchsorted(ids, trial_ids)].reshape(len(trial_ids), -1)
    sk = Ridge(alpha=10.0).fit(np.hstack(blocks), Y)
    np.testing.assert_allclose(res.decoder.weight.detach().numpy(), sk.coef_, rtol=1e-3,
                               atol=1e-4)
    # test predictions are the mean over each image's repeated trials
    tb, t_ids = micro_subject.memory_windows("test", 2, "past")
    per_trial = sk.predict(np.hstack(tb)).reshape(len(t_ids), 2, 3)
    expected = pd.DataFrame(per_trial.reshape(len(t_ids), -1)).groupby(t_ids).mean()
    np.testing.assert_allclose(res.test_pred.reshape(len(res.test_ids), -1),
                               expected.to_numpy(), rtol=1e-3, atol=1e-4)


def test_alphas_chosen_by_image_grouped_folds(micro_subject):
    """With single trials (memory 2) the chosen alphas are those of a by-hand CV over folds
    that keep every image's repeats on one side, on training images only; LOO is refused."""
    from sklearn.linear_model import Ridge
    from sklearn.model_selection import GroupKFold

    from lib.decoding.stage1 import fit_stage1

    feats, ids = _targets(micro_subject, seed=3)
    blocks, trial_ids = micro_subject.memory_windows("train", 2, "past")
    assert len(np.unique(trial_ids)) < len(trial_ids)  # repeats exist: grouping matters
    alphas = [0.1, 10.0, 1e3, 1e5]
    res = fit_stage1(micro_subject, feats, ids, memory_size=2, alphas=alphas, cv=3,
                     device="cpu")
    assert res.settings["cv"] == 3 and "grouped by image" in res.settings["cv_folds"]
    X = np.hstack(blocks).astype(np.float64)
    Y = feats[np.searchsorted(ids, trial_ids)].reshape(len(trial_ids), -1)
    sse = np.zeros((len(alphas), Y.shape[1]))
    for tr, va in GroupKFold(3).split(X, groups=trial_ids):
        for a, alpha in enumerate(alphas):
            pred = Ridge(alpha=alpha).fit(X[tr], Y[tr]).predict(X[va])
            sse[a] += ((pred - Y[va]) ** 2).sum(0)
    np.testing.assert_array_equal(res.best_alphas, np.asarray(alphas)[sse.argmin(0)])
    with pytest.raises(TypeError, match="image-grouped folds"):
        fit_stage1(micro_subject, feats, ids, alphas=alphas, cv="loo", device="cpu")


def test_default_alphas_are_the_ridge_grid(micro_subject):
    from lib.decoding.stage1 import fit_stage1
    from lib.ridge import DEFAULT_ALPHAS

    feats, ids = _targets(micro_subject, seed=4)
    res = fit_stage1(micro_subject, feats, ids, device="cpu")
    assert res.settings["alphas"] == list(DEFAULT_ALPHAS)
    assert 0.0 <= res.settings["alpha_at_grid_edge_fraction"] <= 1.0


def test_leakage_check_names_the_place():
    from lib.decoding.decoder import LeakageError, assert_no_test_ids

    assert_no_test_ids([1, 2], [3], "here")
    with pytest.raises(LeakageError, match="alpha selection"):
        assert_no_test_ids([1, 3], [3], "the alpha selection")


# --- evaluation helpers --------------------------------------------------------------------

def test_derangement_has_no_fixed_point():
    from lib.decoding import derangement

    for n in (2, 3, 10, 50):
        p = derangement(n, seed=n)
        assert sorted(p) == list(range(n)) and not np.any(p == np.arange(n))
    with pytest.raises(ValueError):
        derangement(1)


def test_nearest_train_matches_sklearn_neighbors():
    from sklearn.neighbors import NearestNeighbors

    from lib.decoding import nearest_train

    rng = np.random.default_rng(0)
    pred, train = rng.normal(size=(6, 2, 4)), rng.normal(size=(20, 2, 4))
    idx, sim = nearest_train(pred, train)
    nn_ = NearestNeighbors(n_neighbors=1, metric="cosine").fit(train.reshape(20, -1))
    dist, expected = nn_.kneighbors(pred.reshape(6, -1))
    np.testing.assert_array_equal(idx, expected[:, 0])
    np.testing.assert_allclose(sim, 1 - dist[:, 0], atol=1e-10)


def test_fit_stage1_and_evaluate_end_to_end(micro_subject, tmp_path):
    """Real-architecture tiny BLIP-2 loaded by path, as nsd.yaml's checkpoints are.

    The evaluation pieces chained as chapter 05 chains them (its end-to-end run is
    tests/test_notebooks.py): captions, controls, scores, retrieval, outputs.
    """
    from lib.decoding import (
        CONDITION_COLUMNS,
        brain_vs_shuffled,
        derangement,
        fit_stage1,
        generate_captions,
        load_captioner,
        lookup_features,
        nearest_train,
        ratio_to_upper_bound,
        retrieval_options,
        score_conditions,
        write_run_outputs,
    )
    from lib.features.qformer import extract_qformer_features
    from lib.metrics import jsonable, retrieval_topk
    from tests.tiny_blip2 import caption_images, make_tiny_blip2

    model_path = make_tiny_blip2(tmp_path / "blip2-opt", kind="opt")
    feats, ids = extract_qformer_features(micro_subject, model_path, tmp_path / "q.h5",
                                          device="cpu")
    res = fit_stage1(micro_subject, feats, ids, alphas=[1.0, 1e3], device="cpu")
    run_dir = tmp_path / "decoding" / "stage1"
    res.decoder.save(run_dir)
    write_predictions(run_dir / "predictions.h5", res.test_pred, res.test_ids, res.train_pred,
                      res.train_ids)

    preds = read_predictions(run_dir)
    test_ids, test_pred = preds["test_ids"], preds["test_pred"]
    n = len(res.test_ids)
    assert list(test_ids) == list(res.test_ids)
    model, processor = load_captioner(model_path, device="cpu")
    brain = generate_captions(test_pred, model, processor, max_new_tokens=8)
    assert brain == generate_captions(res.test_pred, model, processor, max_new_tokens=8,
                                      progress=False)
    # shuffled control = the decoded captions re-paired with other images
    perm = derangement(n, 0)
    shuffled = [brain[j] for j in perm]
    assert sorted(shuffled) == sorted(brain)
    # upper bound = BLIP-2's own generate on the pixels
    upper = generate_captions(lookup_features(feats, ids, test_ids), model, processor,
                              max_new_tokens=8)
    images = micro_subject.images(res.test_ids)
    assert upper == caption_images(images, model, processor, max_new_tokens=8)
    # nearest-train control uses training images only
    train_ids = np.asarray(micro_subject.image_ids("train"))
    train_true = lookup_features(feats, ids, train_ids)
    mean = train_true.mean(axis=0)
    near, _ = nearest_train(test_pred - mean, train_true - mean)
    near_ids = train_ids[near]
    assert set(near_ids) <= set(micro_subject.image_ids("train").tolist())
    assert not set(near_ids) & set(test_ids.tolist())
    nearest = [caps[0] for caps in micro_subject.captions(near_ids)]

    references = micro_subject.captions(test_ids)
    conditions = {"brain": brain, "shuffled_brain": shuffled, "nearest_train": nearest,
                  "image_upper_bound": upper}
    caps_m, per_item = score_conditions(conditions, references, embeddings=False)
    assert set(caps_m) == set(CONDITION_COLUMNS) == {"brain", "shuffled_brain",
                                                     "nearest_train", "image_upper_bound"}
    assert all(len(v) == n for cond in per_item.values() for v in cond.values())
    assert set(brain_vs_shuffled(per_item, n_permutations=200)) == {"CIDEr", "METEOR"}

    options = retrieval_options("book", k=300, n_draws=5)
    ret = jsonable(retrieval_topk(test_pred, lookup_features(feats, ids, test_ids), **options))
    assert ret["k"] == n  # k capped at the number of test images: one draw, and it says so
    assert ret["n_draws"] == 1 and ret["options"]["n_draws"] == 1
    assert ret["options"]["n_draws_requested"] == 5 and ret["options"]["repeat_averaged"] is True
    assert ret["options"]["centring"].startswith("mean true embedding")
    ratio = ratio_to_upper_bound(caps_m)
    for m, r in ratio.items():
        if caps_m["image_upper_bound"][m]:
            assert r == pytest.approx(caps_m["brain"][m] / caps_m["image_upper_bound"][m])

    table = pd.DataFrame({"nsd_id": test_ids, "caption": brain,
                          "references": [json.dumps(list(r)) for r in references]})
    cap_path, met_path = write_run_outputs(tmp_path / "decoding", "stage1", table,
                                           {"n_test": n, "captions": caps_m})
    back = pd.read_csv(cap_path)
    assert json.loads(back.references[0]) == micro_subject.captions(res.test_ids[:1])[0]
    assert json.loads(met_path.read_text())["stage1"]["n_test"] == n


def test_retrieval_rules_set_centring_and_trials():
    from lib.decoding import RETRIEVAL_RULES, retrieval_options

    book = retrieval_options("book", k=10, n_draws=3, seed=1)
    assert book == {"k": 10, "n_draws": 3, "seed": 1, "repeat_averaged": True,
                    "center": "candidates"}
    paper = retrieval_options("paper")
    assert paper["center"] == "none" and paper["repeat_averaged"] is False
    assert set(RETRIEVAL_RULES) == {"book", "paper"}
    with pytest.raises(ValueError, match="retrieval_rule='nope'"):
        retrieval_options("nope")


def test_itc_scores_match_the_retrieval_model(micro_root, micro_subject):
    from lib.decoding import itc_image_caption_scores, load_itm

    model, processor = load_itm(micro_root / "models" / "blip2-toy-itm")
    ids = micro_subject.image_ids("test")[:4]
    images = micro_subject.images(ids)
    caps = [c[0] for c in micro_subject.captions(ids)]
    ours = itc_image_caption_scores(images, caps, model, processor, batch_size=3)
    inputs = processor(images=list(images), text=caps, return_tensors="pt", padding="max_length",
                       max_length=64 + model.config.num_query_tokens, truncation=True)
    with torch.no_grad():
        out = model(**inputs, use_image_text_matching_head=False)
    np.testing.assert_allclose(ours, np.diag(out.logits_per_image.numpy()), atol=1e-5)


def test_excluded_images_stay_out_of_the_fit(micro_subject):
    from sklearn.linear_model import Ridge

    from lib.decoding.stage1 import fit_stage1

    feats, ids = _targets(micro_subject, seed=2)
    X, x_ids = micro_subject.averaged_betas("train")
    held = x_ids[::5]
    res = fit_stage1(micro_subject, feats, ids, alphas=[10.0], device="cpu", exclude_ids=held)
    keep = ~np.isin(x_ids, held)
    assert res.settings["n_train_samples"] == keep.sum()
    assert res.settings["n_excluded_images"] == len(held)
    Y = feats[np.searchsorted(ids, x_ids[keep])].reshape(keep.sum(), -1)
    sk = Ridge(alpha=10.0).fit(X[keep], Y)
    np.testing.assert_allclose(res.decoder.weight.detach().numpy(), sk.coef_, rtol=1e-3,
                               atol=1e-4)


def test_compare_runs_is_paired_over_test_images():
    from lib.decoding import compare_runs, ratio_to_upper_bound
    from lib.metrics import retrieval_topk

    rng = np.random.default_rng(0)
    true = rng.normal(size=(40, 8))
    good = retrieval_topk(true + 0.3 * rng.normal(size=true.shape), true, k=40,
                          repeat_averaged=True)
    bad = retrieval_topk(true + 3.0 * rng.normal(size=true.shape), true, k=40,
                         repeat_averaged=True)
    a, b = {"retrieval": {"brain": good}}, {"retrieval": {"brain": bad}}
    out = compare_runs(a, b, key="retrieval", direction="brain_to_image", n_boot=2000,
                       n_permutations=2000)
    hits_a = np.array(good["brain_to_image"]["per_item"])
    hits_b = np.array(bad["brain_to_image"]["per_item"])
    assert out["difference"] == pytest.approx((hits_a - hits_b).mean())
    assert out["top1_a"] > out["top1_b"] and out["ci95"][0] > 0 and out["p_value"] < 0.01
    assert out["n_items"] == 40 and out["n_draws"] == 1
    reverse = compare_runs(b, a, key="retrieval", direction="brain_to_image", n_boot=2000,
                           n_permutations=2000)
    assert reverse["p_value"] > 0.5 and reverse["ci95"][1] < 0
    ratios = ratio_to_upper_bound({"brain": {"CIDEr": 0.5, "BLEU-1": 0.2},
                                   "image_upper_bound": {"CIDEr": 1.0, "BLEU-1": 0.0}})
    assert ratios["CIDEr"] == 0.5 and np.isnan(ratios["BLEU-1"])


def test_single_trial_predictions_are_one_trial_of_each_image(micro_subject, tmp_path):
    """The original study's retrieval rule: one random test trial per image, seeded."""
    from lib.decoding import single_trial_predictions
    from lib.decoding.stage1 import fit_stage1, stage1_inputs

    feats, ids = _targets(micro_subject)
    res = fit_stage1(micro_subject, feats, ids, memory_size=2, alphas=[1.0, 1e3], cv=2,
                     device="cpu")
    res.decoder.save(tmp_path)
    pred, pred_ids = single_trial_predictions(tmp_path, micro_subject, seed=0)
    assert np.array_equal(pred_ids, res.test_ids) and pred.shape == res.test_pred.shape
    blocks, trial_ids = stage1_inputs(micro_subject, "test", 2, "past", trials=True)
    per_trial = res.decoder.predict(blocks)
    for row, nsd in enumerate(pred_ids):
        trials = per_trial[trial_ids == nsd]
        assert len(trials) > 1  # several repeats, one of them chosen
        assert min(np.abs(t - pred[row]).max() for t in trials) < 1e-5
    again, _ = single_trial_predictions(tmp_path, micro_subject, seed=0)
    other, _ = single_trial_predictions(tmp_path, micro_subject, seed=1)
    assert np.array_equal(pred, again) and not np.array_equal(pred, other)


def test_notebook_steps_compose_fit_stage1(micro_subject):
    """Notebook 03's steps give fit_stage1's decoder, settings and predictions."""
    from lib.decoding import (
        decoder_from_ridge,
        drop_images,
        fit_ridge_map,
        fit_stage1,
        lookup_features,
        predict_by_image,
        stage1_inputs,
        stage1_settings,
    )

    feats, ids = _targets(micro_subject, seed=5)
    held = micro_subject.image_ids("train")[:4]
    res = fit_stage1(micro_subject, feats, ids, alphas=[1.0, 1e3], cv=3, device="cpu",
                     exclude_ids=held)
    X, x_ids = drop_images(*stage1_inputs(micro_subject, "train"), held)
    assert not np.isin(held, x_ids).any() and len(x_ids) == len(X[0])
    ridge = fit_ridge_map(X, x_ids, lookup_features(feats, ids, x_ids), [1.0, 1e3], 3, "cpu")
    settings = stage1_settings(ridge, len(x_ids), exclude_ids=held)
    assert settings.items() <= res.settings.items() and settings["n_excluded_images"] == 4
    dec = decoder_from_ridge(ridge, [b.shape[1] for b in X], 2, 3, settings)
    np.testing.assert_array_equal(dec.weight.detach().numpy(), res.decoder.weight.detach().numpy())
    pred, pred_ids = predict_by_image(dec, *stage1_inputs(micro_subject, "test"))
    np.testing.assert_array_equal(pred_ids, res.test_ids)
    np.testing.assert_allclose(pred, res.test_pred, rtol=1e-6)
