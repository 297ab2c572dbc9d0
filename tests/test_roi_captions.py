"""Captions from ROI indicator patterns: normalisation as in the original study; the category
check against a base rate from matched null patterns, with a vocabulary read from the data."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from lib.decoding.category import null_patterns, null_test, permutation_p
from lib.decoding.decoder import QueryTokenDecoder
from lib.decoding.roi_captions import (
    auto_scale,
    indicator_tokens,
    load_lexicon,
    mentions,
    named_categories,
    names_category,
)


def _decoder(block_sizes, n_query=3, hidden=5, seed=0):
    dec = QueryTokenDecoder(block_sizes, n_query, hidden)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        dec.weight.copy_(torch.randn(dec.weight.shape, generator=g))
        dec.bias.copy_(torch.randn(dec.bias.shape, generator=g))
    return dec.eval()


def test_indicator_tokens_by_hand():
    dec = _decoder([6])
    x = np.array([1, 0, 1, 1, 0, 0], np.float32)
    W = dec.weight.detach().numpy().astype(np.float64)
    b = dec.bias.detach().numpy().astype(np.float64)
    scale = 11.0
    expected = []
    for q in range(3):  # original: p = roi @ coef_q.T ; p /= ||p|| ; p = p * const + intercept_q
        Wq, bq = W[q * 5:(q + 1) * 5], b[q * 5:(q + 1) * 5]
        p = Wq @ x
        expected.append(p / (np.linalg.norm(p) + 1e-8) * scale + bq)
    got = indicator_tokens(dec, x, scale)
    assert got.shape == (1, 3, 5)
    np.testing.assert_allclose(got[0], np.array(expected), rtol=1e-5, atol=1e-5)
    # every token's deviation from the intercept has norm `scale`
    dev = got[0] - b.reshape(3, 5)
    np.testing.assert_allclose(np.linalg.norm(dev, axis=-1), scale, rtol=1e-5)


def test_indicator_goes_to_block_zero_of_a_memory_window():
    dec = _decoder([4, 4, 4])
    x = np.array([0, 1, 1, 0], np.float32)
    got = indicator_tokens(dec, np.stack([x, 1 - x]), 2.0)
    # same as a one-block decoder holding only block 0's weights
    single = _decoder([4])
    with torch.no_grad():
        single.weight.copy_(dec.weight[:, :4])
        single.bias.copy_(dec.bias)
    np.testing.assert_allclose(got, indicator_tokens(single, np.stack([x, 1 - x]), 2.0),
                               rtol=1e-6)
    with pytest.raises(ValueError, match="voxels"):
        indicator_tokens(dec, np.ones(5, np.float32), 1.0)


def test_auto_scale_is_median_deviation_norm():
    rng = np.random.default_rng(0)
    t = rng.normal(size=(50, 3, 4))
    dev = t - t.mean(0)
    assert auto_scale(t) == pytest.approx(np.median(np.sqrt((dev ** 2).sum(-1))))


VOCAB = {"faces": ("face", "smiley face", "faces"), "bodies": ("person", "stick figure"),
         "places": ("sky", "grass", "room")}


@pytest.mark.parametrize("caption,roi,expected", [
    ("a smiley face in the sky", "faces", True),
    ("a red circle on the grass", "faces", False),
    ("A little PERSON in a room.", "bodies", True),
    ("a stick in a figure", "bodies", False),      # a phrase counts only as a whole
    ("a skyscraper", "places", False),             # whole words only
    ("a blue star over a lake", "words", None),    # no vocabulary for this ROI
])
def test_names_category(caption, roi, expected):
    assert names_category(caption, roi, VOCAB) is expected


def test_named_categories():
    assert named_categories("a smiley face next to a person on the grass", VOCAB) == [
        "faces", "bodies", "places"]
    assert named_categories("a red circle", VOCAB) == []
    assert mentions("Two faces.", VOCAB["faces"]) and not mentions("", VOCAB["faces"])


def test_lexicon_file_roundtrip_and_errors(tmp_path):
    path = tmp_path / "lexicon.json"
    with pytest.raises(FileNotFoundError, match="python -m lib.nsd lexicon"):
        load_lexicon(path)
    path.write_text(json.dumps({"source": "test", "vocabulary": {"faces": ["Face"]},
                                "missing": {"words": "none in COCO"}}))
    lex = load_lexicon(path)
    assert lex["vocabulary"] == {"faces": ("face",)} and lex["missing"] == {"words": "none in COCO"}
    path.write_text(json.dumps({"faces": ["face"]}))
    with pytest.raises(ValueError, match="vocabulary"):
        load_lexicon(path)
    path.write_text(json.dumps({"vocabulary": {"faces": []}}))
    with pytest.raises(ValueError, match="missing"):
        load_lexicon(path)


def test_toy_lexicon_names_every_category_word_of_the_captions():
    from lib.toyworld import captions as tc

    lex = tc.category_lexicon()
    assert set(lex) == {"faces", "bodies", "words", "places"}
    for roi, kinds in tc.ROI_KINDS.items():
        for kind in kinds:
            assert all(mentions(n, lex[roi]) for n in tc.NOUNS[kind] + (tc.PLURALS[kind],))
        others = [n for k, nouns in tc.NOUNS.items() if k not in kinds for n in nouns]
        assert not any(mentions(n, lex[roi]) for n in others), roi
    for place, words in tc.PLACE_WORDS.items():
        for phrase in tc.PLACE_PHRASES[place] + tc.PLACE_NOUNS[place]:
            assert mentions(phrase, words), phrase
            other = [w for p, ws in tc.PLACE_WORDS.items() if p != place for w in ws]
            assert not mentions(phrase, other), phrase
    assert not any(mentions(n, lex["places"]) for nouns in tc.NOUNS.values() for n in nouns)


def test_null_patterns_match_the_roi_size_and_avoid_it():
    ijk = np.stack(np.meshgrid(*[np.arange(8)] * 3, indexing="ij"), -1).reshape(-1, 3)
    roi = (ijk < 3).all(1)                                  # a 3x3x3 cube: 27 voxels
    for kind in ("blob", "scatter"):
        p = null_patterns(ijk, roi, 20, seed=1, kind=kind)
        assert p.shape == (20, len(ijk)) and set(np.unique(p)) == {0.0, 1.0}
        assert (p.sum(1) == 27).all() and not p[:, roi].any()
        np.testing.assert_array_equal(p, null_patterns(ijk, roi, 20, seed=1, kind=kind))
    # a blob is compact (spread like the cube), scattered voxels are not
    def spread(q):
        return np.mean([ijk[r > 0].std(0).mean() for r in q])

    assert spread(null_patterns(ijk, roi, 20, kind="blob")) < 1.2 < spread(
        null_patterns(ijk, roi, 20, kind="scatter"))
    with pytest.raises(ValueError, match="outside the ROI"):
        null_patterns(ijk, np.ones(len(ijk), bool), 5)


def test_permutation_p():
    null = np.array([0.0, 0.0, 0.2, 0.4])
    assert permutation_p(1.0, null) == pytest.approx(1 / 5)    # smallest reachable: 1/(1+n)
    assert permutation_p(0.2, null) == pytest.approx(3 / 5)    # ties count against
    assert permutation_p(0.0, null) == 1.0


# --- the test itself, with the micro world's BLIP-2 and a brain map built to know (or not) faces

@pytest.fixture(scope="module")
def face_world(micro_root, tmp_path_factory):
    """A prepared micro subject, query tokens that encode each scene, captions, face images.

    The micro world's models are barely trained (its Q-Former does not tell face images
    apart, its captioner writes one caption for everything), so the tokens here are a fixed
    random linear code of each scene's ground truth (objects present and their areas, place,
    colours) plus noise.
    """
    from lib.decoding.generate import load_captioner
    from lib.nsd import PreparedSubject, prepare_subject

    subject = PreparedSubject(prepare_subject(micro_root / "nsd", 1,
                                              tmp_path_factory.mktemp("prepared")))
    scenes = json.loads((micro_root / "truth" / "scenes.json").read_text())
    colors = sorted({o["color"] for s in scenes for o in s["objects"]})
    latents = np.array([[s[k] for k in s if k.startswith(("has_", "area_"))]
                        + [s["place"] == p for p in ("sky", "grass", "water", "room")]
                        + [sum(o["color"] == c for o in s["objects"]) for c in colors]
                        for s in scenes], np.float32)
    rng = np.random.default_rng(0)
    n_query, hidden = 4, 32
    tokens = (latents @ rng.normal(size=(latents.shape[1], n_query * hidden))
              + 0.3 * rng.normal(size=(len(scenes), n_query * hidden)))
    model, processor = load_captioner(micro_root / "models" / "blip2-toy-opt", device="cpu")
    return {"subject": subject, "model": model, "processor": processor,
            "tokens": tokens.reshape(len(scenes), n_query, hidden).astype(np.float32),
            "captions": [s["captions"] for s in scenes],
            "has_face": np.array([s["has_face"] for s in scenes]),
            "lexicon": load_lexicon(micro_root / "truth" / "lexicon.json")}


def _brain_map(subject, tokens, has_face, roi_knows_faces, seed=0):
    """A linear brain map whose voxel weights are single images' token deviations.

    Every voxel is tuned to one random image (its weight is that image's tokens minus the
    mean); with ``roi_knows_faces``, the faces ROI's voxels are tuned to face images only,
    otherwise the ROI's voxels are tuned like any other (no category information).
    """
    from lib.decoding.decoder import QueryTokenDecoder

    rng = np.random.default_rng(seed)
    dev = (tokens - tokens.mean(0)).reshape(len(tokens), -1)
    n_q, hidden = tokens.shape[1:]
    roi = np.asarray(subject.roi_mask("faces"), bool)
    which = rng.integers(len(tokens), size=subject.n_voxels)
    if roi_knows_faces:
        which[roi] = rng.choice(np.flatnonzero(has_face), roi.sum())
    dec = QueryTokenDecoder([subject.n_voxels], n_q, hidden)
    with torch.no_grad():
        dec.weight.copy_(torch.as_tensor(dev[which].T, dtype=torch.float32))
        dec.bias.copy_(torch.as_tensor(tokens.mean(0).reshape(-1), dtype=torch.float32))
    return dec.eval()


def _retrieval_captioner(tokens, captions, temperature=0.1):
    """Caption by retrieval: the first reference caption of the image whose true tokens are
    nearest (cosine, after centring on the mean tokens); sampled captions draw the image with
    probability softmax(cos / T) and one of its references (torch's random state), as a language
    model samples from its beliefs.

    A captioner that follows the tokens, where the micro world's BLIP-2 does not.
    """
    flat = tokens.reshape(len(tokens), -1)
    mean = flat.mean(0)
    flat = (flat - mean) / np.linalg.norm(flat - mean, axis=1, keepdims=True)

    def captioner(query, sample=False):
        q = query.reshape(len(query), -1) - mean
        cos = torch.as_tensor(q @ flat.T / np.linalg.norm(q, axis=1, keepdims=True))
        if not sample:
            return [captions[i][0] for i in cos.argmax(1).tolist()]
        image = torch.multinomial(torch.softmax(cos / temperature, 1), 1)[:, 0].tolist()
        ref = torch.randint(len(captions[0]), (len(q),)).tolist()
        return [captions[i][j] for i, j in zip(image, ref)]

    return captioner


def _face_test(world, n_captions):
    from lib.decoding.category import category_patterns, category_test

    subject, tokens, has_face = world["subject"], world["tokens"], world["has_face"]
    decoders = {"knows": _brain_map(subject, tokens, has_face, True),
                **{f"blind{s}": _brain_map(subject, tokens, has_face, False, seed=s)
                   for s in range(4)}}
    patterns = category_patterns(subject, world["lexicon"], rois=["faces"], n_null=99, seed=0)
    return category_test(decoders, patterns, _retrieval_captioner(tokens, world["captions"]),
                         auto_scale(tokens), n_captions=n_captions, seed=0).set_index("stage")


def test_category_test_finds_a_category_roi_and_only_a_real_one(face_world):
    table = _face_test(face_world, n_captions=20)
    assert (table.n_null == 99).all() and (table.vocabulary == "available").all()
    knows = table.loc["knows"]
    assert knows.mention_rate > knows.null_q95 and knows.p_value < 0.05, knows.to_dict()
    blind = table.drop("knows")
    assert (blind.p_value > 0.05).all(), blind[["mention_rate", "base_rate", "p_value"]]
    assert (table.base_rate > 0.05).all()  # random regions name faces too: hence a base rate


def test_one_greedy_caption_cannot_beat_a_high_base_rate(face_world):
    """With one (greedy) caption per pattern the outcome is 0 or 1: p >= about the base rate."""
    table = _face_test(face_world, n_captions=1)
    assert set(table.mention_rate) <= {0.0, 1.0}
    assert (table.p_value >= table.base_rate - 1e-9).all()
    assert table.loc["knows", "mention_rate"] == 1.0


def test_category_test_with_blip2_and_rois_without_vocabulary(face_world):
    from lib.decoding.category import blip2_captioner, category_patterns, category_test

    w = face_world
    lexicon = {**w["lexicon"], "missing": {"words": "COCO has no text category"}}
    lexicon["vocabulary"] = {k: v for k, v in lexicon["vocabulary"].items() if k != "words"}
    captioner = blip2_captioner(w["model"], w["processor"], max_new_tokens=8)
    dec = _brain_map(w["subject"], w["tokens"], w["has_face"], True)
    patterns = category_patterns(w["subject"], lexicon, rois=["V1", "faces", "words"], n_null=4)
    assert [p.roi for p in patterns] == ["faces", "words"] and patterns[1].patterns is None
    assert patterns[0].patterns.shape == (5, len(w["subject"].voxel_ijk))
    table = category_test({"s": dec}, patterns, captioner, 1.0, n_captions=2)
    assert list(table.roi) == ["faces", "words"]
    faces, words = table.iloc[0], table.iloc[1]
    assert 0 <= faces.mention_rate <= 1 and 0 <= faces.base_rate <= 1
    assert 0.2 <= faces.p_value <= 1       # (1 + k) / 5
    assert words.vocabulary.startswith("no category vocabulary available")
    assert np.isnan(words.p_value) and np.isnan(words.mention_rate)
    again = category_test({"s": dec}, patterns[:1], captioner, 1.0, n_captions=2)
    assert again.iloc[0].equals(faces)  # seeded: the sampled captions are reproducible


def test_memory_ablation_reads_runs_and_metrics(tmp_path):
    from lib.decoding.ablation import ablation_figure, memory_ablation
    from lib.decoding.decoder import write_predictions
    from lib.metrics import retrieval_topk

    rng = np.random.default_rng(0)
    ids = np.arange(30, 60)
    true = rng.normal(size=(30, 3, 4)).astype(np.float32)
    for name, noise in (("stage1", 0.5), ("stage1_mem3", 2.0), ("stage2", 1.0)):
        pred = true + noise * rng.normal(size=true.shape).astype(np.float32)
        write_predictions(tmp_path / name / "predictions.h5", pred, ids)
    (tmp_path / "metrics.json").write_text(json.dumps({"stage1": {
        "captions": {"brain": {"CIDEr": 0.8}, "shuffled_brain": {"CIDEr": 0.1}},
        "retrieval": {"brain": {}}}}))
    table = memory_ablation(tmp_path, [1, 3, 5], features=true[::-1], feature_ids=ids[::-1],
                            k=10, n_draws=5)
    assert list(table.run) == ["stage1", "stage1_mem3", "stage2"]
    assert table.set_index("run").loc["stage1", "CIDEr"] == 0.8
    assert np.isnan(table.set_index("run").loc["stage2", "CIDEr"])
    from lib.decoding.decoder import read_predictions

    p = read_predictions(tmp_path / "stage1_mem3")
    def flat(x):
        return x.reshape(len(x), -1)

    ref = retrieval_topk(flat(p["test_pred"]), flat(true), k=10, n_draws=5, seed=0,
                         repeat_averaged=True, center="candidates")  # 05's options
    assert table.set_index("run").loc["stage1_mem3", "top1"] == pytest.approx(
        ref["brain_to_image"]["mean"])
    assert table.set_index("run").loc["stage1_mem3", "memory_size"] == 3
    assert len(ablation_figure(table).data) >= 3


def test_the_toy_build_writes_its_lexicon(micro_root):
    from lib.toyworld.captions import category_lexicon

    lex = load_lexicon(micro_root / "truth" / "lexicon.json")
    assert lex["vocabulary"] == {k: tuple(v) for k, v in category_lexicon().items()}
    assert lex["missing"] == {}


def test_null_test_summarises_the_rates():
    rates = np.array([0.8, 0.0, 0.2, 0.8, 0.4])
    out = null_test(rates)
    assert out["mention_rate"] == 0.8 and out["base_rate"] == pytest.approx(0.35)
    assert out["p_value"] == pytest.approx(permutation_p(0.8, rates[1:])) == pytest.approx(2 / 5)
    assert json.loads(out["null_rates"]) == [0.0, 0.2, 0.8, 0.4]
    assert out["null_q95"] == pytest.approx(np.quantile(rates[1:], 0.95))
