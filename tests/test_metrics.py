"""Tests of lib.metrics against independent computations (pycocoevalcap, loops, exact tests)."""

from __future__ import annotations

import itertools
import os
import shutil

import numpy as np
import pandas as pd
import pytest

from lib import metrics as M

#: One test process runs this module (``make test`` passes ``--dist loadgroup``), so that its
#: METEOR scorer (a Java process that loads a 60 MB paraphrase table, ~13 s of CPU) starts once.
pytestmark = pytest.mark.xdist_group("meteor")

HYPS = [
    "a man riding a wave on top of a surfboard",
    "a plate of food with broccoli and rice",
    "two dogs playing with a frisbee in the grass",
    "a red double decker bus driving down a street",
    "a cat sitting on a laptop keyboard",
    "a group of people standing in a field",
]
REFS = [
    [
        "A surfer rides a large wave in the ocean.",
        "A man on a surfboard riding a wave.",
        "Surfer in a wetsuit catching a wave.",
    ],
    [
        "A plate with rice, broccoli and chicken.",
        "Food on a white plate with vegetables.",
        "A dinner of rice and steamed broccoli.",
    ],
    [
        "Two dogs chase a frisbee on the lawn.",
        "Dogs playing in the grass with a toy.",
        "A pair of dogs run after a flying disc.",
    ],
    [
        "A red bus drives down a city street.",
        "A double decker bus on the road.",
        "Red double-decker bus in London traffic.",
    ],
    [
        "A cat lying on a laptop computer.",
        "A kitten sits on the keys of a laptop.",
        "The cat is sleeping on the keyboard.",
    ],
    [
        "People stand around in a grassy field.",
        "A crowd of people in a park.",
        "Several people gathered on the grass.",
    ],
]


@pytest.fixture(scope="module")
def meteor():
    with M.MeteorScorer() as scorer:
        yield scorer


def _pycocoevalcap(hyps, refs, with_meteor=True):
    """The COCO toolkit called directly, as its own example does."""
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.meteor.meteor import Meteor
    from pycocoevalcap.rouge.rouge import Rouge
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    tok = PTBTokenizer()
    gts = tok.tokenize({i: [{"caption": c} for c in r] for i, r in enumerate(refs)})
    res = tok.tokenize({i: [{"caption": h}] for i, h in enumerate(hyps)})
    out, items = {}, {}
    b, bs = Bleu(4).compute_score(gts, res, verbose=0)
    for n in range(4):
        out[f"BLEU-{n + 1}"], items[f"BLEU-{n + 1}"] = b[n], bs[n]
    if with_meteor:
        met = Meteor()
        out["METEOR"], items["METEOR"] = met.compute_score(gts, res)
        del met
    out["ROUGE-L"], items["ROUGE-L"] = Rouge().compute_score(gts, res)
    out["CIDEr"], items["CIDEr"] = Cider().compute_score(gts, res)
    return out, items


# ----------------------------------------------------------------------------- captions
def test_caption_metrics_equal_direct_pycocoevalcap(meteor):
    ours = M.caption_metrics(HYPS, REFS, per_item=True, meteor=meteor)
    theirs, items = _pycocoevalcap(HYPS, REFS)
    assert set(M.CAPTION_METRICS) <= set(ours)
    for key in M.CAPTION_METRICS:
        assert ours[key] == pytest.approx(theirs[key], abs=1e-12), key
        np.testing.assert_allclose(ours["per_item"][key], items[key], atol=1e-12, err_msg=key)
        assert ours["per_item"][key].shape == (len(HYPS),)
    assert ours["n"] == len(HYPS)
    assert 0 < ours["BLEU-4"] < ours["BLEU-1"] < 1 and 0 < ours["CIDEr"] < 10


def test_ptb_tokenize_cache_equals_one_java_run(monkeypatch):
    """Captions seen before come from the cache, new ones from one Java run: the tokens equal
    one run over the whole list (duplicates and quotes included, the cache filled in another
    order), and a list of seen captions starts no Java."""
    from lib.metrics import java_tools

    captions = ['A "quoted" word.', "It's a dog's toy!", "two  spaces", 'he said "hi"',
                "A man riding a wave on top of a surfboard.", "It's a dog's toy!", ""]
    direct = java_tools._run_ptb_tokenizer(captions)
    assert direct[1] == "it 's a dog 's toy" and direct[0] == "a quoted word"
    monkeypatch.setattr(java_tools, "_TOKENS", {})
    runs = []
    run = java_tools._run_ptb_tokenizer
    monkeypatch.setattr(java_tools, "_run_ptb_tokenizer", lambda c: runs.append(c) or run(c))
    java_tools.ptb_tokenize(captions[::-2])
    assert java_tools.ptb_tokenize(captions) == direct
    assert java_tools.ptb_tokenize(captions[2:]) == direct[2:]
    assert runs == [captions[::-2], ["It's a dog's toy!", 'he said "hi"']]  # the new ones


def test_references_deduplicated(meteor):
    # Duplicates leave BLEU unchanged (clipped counts and closest length use the max over
    # references) but CIDEr averages over references, so duplicates would re-weight them.
    dup = [r[:1] * 3 + r[1:] for r in REFS]
    ours = M.caption_metrics(HYPS, dup, meteor=meteor)
    clean = M.caption_metrics(HYPS, REFS, meteor=meteor)
    for key in M.CAPTION_METRICS:
        assert ours[key] == pytest.approx(clean[key], abs=1e-12), key
    theirs_dup, _ = _pycocoevalcap(HYPS, dup, with_meteor=False)
    assert theirs_dup["BLEU-4"] == pytest.approx(clean["BLEU-4"], abs=1e-12)
    assert abs(theirs_dup["CIDEr"] - clean["CIDEr"]) > 1e-3  # what deduplication prevents


def test_identical_hypothesis_and_reference(meteor):
    refs = [[h] for h in HYPS]
    out = M.caption_metrics(HYPS, refs, meteor=meteor)
    for n in range(1, 5):
        assert out[f"BLEU-{n}"] == pytest.approx(1.0, abs=1e-6)
    assert out["ROUGE-L"] == pytest.approx(1.0)
    assert out["METEOR"] > 0.95


def test_sanitization_of_unicode_and_line_breaks(meteor):
    dirty_h = [
        "a man riding\na wave on top of a surfboard",
        "a plate of food ||| with broccoli\tand rice",
        "",
        "un café au lait\u2028on a table 🙂",
    ]
    clean_h = [
        "a man riding a wave on top of a surfboard",
        "a plate of food with broccoli and rice",
        "",
        "un café au lait on a table 🙂",
    ]
    refs = [
        REFS[0],
        REFS[1],
        REFS[2],
        ["A cup of café au lait on a wooden table.", "Coffee on a table."],
    ]
    dirty = M.caption_metrics(dirty_h, refs, per_item=True, meteor=meteor)
    clean = M.caption_metrics(clean_h, refs, per_item=True, meteor=meteor)
    for key in M.CAPTION_METRICS:
        assert dirty[key] == pytest.approx(clean[key], abs=1e-12), key
    assert dirty["per_item"]["BLEU-1"][2] == pytest.approx(0.0, abs=1e-6)  # empty caption scores 0
    assert dirty["per_item"]["METEOR"][3] > 0.2  # "café" matched the reference
    assert M.sanitize_caption(" a\r\nb\x00c | d ") == "a b c d"


def test_results_are_json_serializable(meteor):
    import json

    out = M.caption_metrics(HYPS[:2], REFS[:2], per_item=True, meteor=meteor)
    full = json.loads(json.dumps(M.jsonable(out)))
    assert full["per_item"]["CIDEr"] == pytest.approx(list(out["per_item"]["CIDEr"]))
    small = M.jsonable(out, drop_per_item=True)
    assert "per_item" not in small and small["BLEU-1"] == out["BLEU-1"]
    ret = M.retrieval_topk(np.eye(5), np.eye(5), repeat_averaged=None)
    assert json.loads(json.dumps(M.jsonable(ret)))["k"] == 5
    assert M.jsonable({"x": np.float32("nan"), "y": np.int64(3)}) == {"x": None, "y": 3}


def test_meteor_process_is_closed(monkeypatch):
    """caption_metrics without a scorer starts its own METEOR process and closes it; a
    closed scorer restarts when entered again."""
    from lib.metrics import captions

    started = []

    class Recorded(M.MeteorScorer):
        def __enter__(self):
            entered = super().__enter__()
            started.append((self, self._proc, self._proc.poll()))
            return entered

    monkeypatch.setattr(captions, "MeteorScorer", Recorded)
    out = M.caption_metrics(HYPS[:2], REFS[:2])
    assert 0 < out["METEOR"] < 1
    [(scorer, proc, running)] = started
    assert running is None and proc.poll() is not None  # alive while used, then closed
    with pytest.raises(RuntimeError, match="closed"):
        scorer.compute_score({0: ["a"]}, {0: ["a"]})
    with scorer:  # entering a closed scorer starts a new process (a notebook cell run again)
        restarted = scorer._proc
        assert restarted is not proc and restarted.poll() is None  # closed before it loads
    assert restarted.poll() is not None


@pytest.mark.parametrize(
    "hyps, refs, match",
    [
        (["a"], [["a"], ["b"]], "same length"),
        ([], [], "empty"),
        (["a", "b"], [["a"], []], r"references\[1\]"),
        (["a"], [["  ", "\n"]], r"references\[0\]"),
        ("a dog", [["a dog"]], "single str"),
        (["a"], ["a dog"], "single str"),
    ],
)
def test_caption_metrics_validation(hyps, refs, match):
    with pytest.raises((ValueError, TypeError), match=match):
        M.caption_metrics(hyps, refs)


def test_spice_skipped_cleanly(monkeypatch, meteor):
    from lib.metrics import captions

    monkeypatch.setattr(
        captions, "_package_dir", lambda: captions.Path("/nonexistent-pycocoevalcap")
    )
    # only SPICE consults the (patched) package folder after the Java runners have been started
    out = captions._spice({0: ["a dog"]}, {0: ["a dog"]})
    assert isinstance(out[0], str) and out[0].startswith("skipped") and out[1] is None


# ---------------------------------------------------------------------------- retrieval
def _loop_top1(pred, true):
    """k-way top-1 over all items with explicit loops (ties count as failures)."""
    from sklearn.metrics.pairwise import cosine_similarity

    s = cosine_similarity(pred.reshape(len(pred), -1), true.reshape(len(true), -1))
    b2i = np.mean([s[i, i] > max(s[i, j] for j in range(len(s)) if j != i) for i in range(len(s))])
    i2b = np.mean([s[i, i] > max(s[j, i] for j in range(len(s)) if j != i) for i in range(len(s))])
    return b2i, i2b


def test_retrieval_perfect_and_k_larger_than_n_makes_one_draw():
    rng = np.random.default_rng(0)
    true = rng.standard_normal((40, 4, 8))
    out = M.retrieval_topk(true * 3.0, true, k=300, n_draws=30, repeat_averaged=True)
    assert out["k"] == 40 and out["n_items"] == 40 and out["n_draws"] == 1
    opts = out["options"]
    assert opts["n_draws"] == 1 and opts["n_draws_requested"] == 30 and opts["k_requested"] == 300
    assert "one draw" in opts["draws"] and "30" not in opts["draws"]
    assert opts["repeat_averaged"] is True and opts["tie"] == "strict"
    assert opts["centring"].startswith("mean true embedding")
    assert out["chance"] == pytest.approx(1 / 40)
    for d in ("brain_to_image", "image_to_brain"):
        assert out[d]["mean"] == 1.0 and out[d]["ci95"] == [1.0, 1.0]
        assert out[d]["per_item"] == [1.0] * 40


def test_retrieval_matches_loop_computation():
    import torch

    rng = np.random.default_rng(1)
    true = rng.standard_normal((60, 16))
    pred = true + 1.5 * rng.standard_normal((60, 16))
    out = M.retrieval_topk(torch.from_numpy(pred), true, k=100, center="none",
                           repeat_averaged=False)  # torch input accepted
    b2i, i2b = _loop_top1(pred, true)
    assert out["brain_to_image"]["mean"] == pytest.approx(b2i)
    assert out["image_to_brain"]["mean"] == pytest.approx(i2b)
    assert out["options"]["centring"] == "none"
    assert 1 / 60 < b2i < 1
    # centring on the candidates' mean = the loop on centred embeddings
    centred = M.retrieval_topk(pred, true, k=100, repeat_averaged=False)
    b2i_c, _ = _loop_top1(pred - true.mean(0), true - true.mean(0))
    assert centred["brain_to_image"]["mean"] == pytest.approx(b2i_c)


def test_retrieval_from_similarity_equals_embedding_front_end():
    rng = np.random.default_rng(0)
    for n, k in ((40, 10), (12, 300)):
        true = rng.normal(size=(n, 6))
        pred = true + 1.5 * rng.normal(size=(n, 6))
        ref = M.retrieval_topk(pred, true, k=k, n_draws=7, seed=3, center="none",
                               repeat_averaged=True)
        a = pred / np.linalg.norm(pred, axis=1, keepdims=True)
        b = true / np.linalg.norm(true, axis=1, keepdims=True)
        got = M.retrieval_from_similarity(a @ b.T, k=k, n_draws=7, seed=3, repeat_averaged=True)
        assert got["forward"]["draws"] == ref["brain_to_image"]["draws"]
        assert got["backward"]["draws"] == ref["image_to_brain"]["draws"]
        assert got["forward"]["ci95"] == ref["brain_to_image"]["ci95"]
        assert got["chance"] == ref["chance"] and got["k"] == ref["k"]
        assert got["n_draws"] == (1 if k >= n else 7)


def test_retrieval_tie_rules():
    sim = np.ones((4, 4))  # every candidate ties with the right one
    strict = M.retrieval_from_similarity(sim, k=4, repeat_averaged=None)
    frac = M.retrieval_from_similarity(sim, k=4, repeat_averaged=None, tie="fractional")
    assert strict["forward"]["mean"] == 0.0 and strict["options"]["tie"] == "strict"
    assert frac["forward"]["mean"] == pytest.approx(0.25)  # chance, as a random tie-break
    sim = np.eye(3) + np.array([[0, 1, 0], [0, 0, 0], [0, 0, 0]])  # row 0: tie with column 1
    frac = M.retrieval_from_similarity(sim, k=3, repeat_averaged=None, tie="fractional")
    assert frac["forward"]["per_item"] == [0.5, 1.0, 1.0]
    with pytest.raises(ValueError, match="tie"):
        M.retrieval_from_similarity(sim, k=3, repeat_averaged=None, tie="random")


def test_retrieval_per_item_averages_over_draws():
    rng = np.random.default_rng(5)
    true = rng.standard_normal((30, 8))
    pred = true + rng.standard_normal((30, 8))
    out = M.retrieval_topk(pred, true, k=10, n_draws=50, repeat_averaged=True)
    per_item = np.array([np.nan if v is None else v for v in out["brain_to_image"]["per_item"]])
    assert np.all((per_item >= 0) & (per_item <= 1) | np.isnan(per_item))
    # the draw means weight items by how often they were drawn; close to the per-item mean
    assert np.nanmean(per_item) == pytest.approx(out["brain_to_image"]["mean"], abs=0.08)


def test_retrieval_random_is_near_chance():
    rng = np.random.default_rng(2)
    pred, true = rng.standard_normal((600, 32)), rng.standard_normal((600, 32))
    out = M.retrieval_topk(pred, true, k=300, n_draws=30, seed=0, repeat_averaged=True)
    assert out["k"] == 300 and out["n_draws"] == 30 and len(out["brain_to_image"]["draws"]) == 30
    assert out["options"]["draws"].startswith("30 random draws")
    for d in ("brain_to_image", "image_to_brain"):
        # 600 items each with success probability 1/300: the pooled mean stays far below
        # 10/300 with overwhelming probability (binomial tail < 1e-6)
        assert out[d]["mean"] < 10 / 300
        lo, hi = out[d]["ci95"]
        assert lo <= out[d]["mean"] <= hi
        blo, bhi = out[d]["ci95_binomial"]
        assert blo <= out[d]["mean"] <= bhi < 0.05
        assert blo <= out["chance"]  # the interval includes chance


def test_retrieval_validation():
    with pytest.raises(ValueError, match="same shape"):
        M.retrieval_topk(np.zeros((5, 3)), np.zeros((6, 3)), repeat_averaged=True)
    with pytest.raises(TypeError, match="repeat_averaged"):
        M.retrieval_topk(np.zeros((5, 3)), np.zeros((5, 3)))  # must be stated
    with pytest.raises(ValueError, match="center"):
        M.retrieval_topk(np.eye(5), np.eye(5), center="train", repeat_averaged=True)
    with pytest.raises(ValueError, match="square"):
        M.retrieval_from_similarity(np.zeros((5, 4)), repeat_averaged=None)


def test_retrieval_table_lists_options():
    out = M.retrieval_topk(np.eye(6), np.eye(6), k=4, n_draws=3, repeat_averaged=True)
    table = M.retrieval_table({("run", "brain"): out}, key_names=("run", "condition"))
    assert list(table.direction) == ["brain to image", "image to brain"]
    assert (table.n_draws == 3).all() and table.repeat_averaged.all()
    assert {"run", "condition", "binom_low", "centring", "tie"} <= set(table.columns)


# ------------------------------------------------------------------------------ stats
def test_permutation_clear_effect():
    rng = np.random.default_rng(3)
    b = rng.random(200)
    a = b + 0.3 + 0.1 * rng.standard_normal(200)
    out = M.permutation_test(a, b, n_permutations=2000, seed=0)
    assert out["p_value"] == pytest.approx(1 / 2001)
    assert out["observed_diff"] == pytest.approx(np.mean(a - b))
    assert M.permutation_test(b, a, n_permutations=2000)["p_value"] > 0.99  # one-sided


def test_permutation_matches_exact_enumeration():
    rng = np.random.default_rng(4)
    d = rng.standard_normal(10) + 0.4
    flips = np.array(list(itertools.product([-1, 1], repeat=10)))
    exact = np.mean((flips * d).mean(1) >= d.mean() - 1e-12)
    out = M.permutation_test(d, np.zeros(10), n_permutations=20000, seed=1)
    assert out["p_value"] == pytest.approx(exact, abs=0.01)  # MC sd ~ 0.002


def test_permutation_null_is_uniform():
    rng = np.random.default_rng(5)
    p = np.array(
        [
            M.permutation_test(
                rng.standard_normal(30), rng.standard_normal(30), n_permutations=199, seed=s
            )["p_value"]
            for s in range(300)
        ]
    )
    # uniform p: mean 0.5 (sd 0.017 over 300 tests), P(p<=0.05) = 0.05 (sd 0.013)
    assert abs(p.mean() - 0.5) < 0.08
    assert 0.01 < np.mean(p <= 0.05) < 0.11


def test_bootstrap_ci_covers_mean():
    rng = np.random.default_rng(6)
    x = rng.normal(2.0, 1.0, size=400)
    out = M.bootstrap_ci(x, n_boot=4000, seed=0)
    assert out["estimate"] == pytest.approx(x.mean())
    assert out["low"] < x.mean() < out["high"]
    width = out["high"] - out["low"]
    assert width == pytest.approx(2 * 1.96 * x.std() / np.sqrt(400), rel=0.2)


def test_wilson_interval_matches_statsmodels_formula():
    lo, hi = M.wilson_interval(30, 100)
    # Wilson interval for 30/100 at 95% (hand computation)
    z = 1.959963984540054
    c = (0.3 + z**2 / 200) / (1 + z**2 / 100)
    h = z * np.sqrt(0.3 * 0.7 / 100 + z**2 / 40000) / (1 + z**2 / 100)
    assert (lo, hi) == pytest.approx((c - h, c + h))


# ------------------------------------------------------------------------- embeddings
def _tiny_tokenizer(path, words):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(["[PAD]", "[UNK]"] + sorted(set(words)))}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]")
    fast.save_pretrained(path)
    return len(vocab)


WORDS = (
    " ".join(HYPS + [r for ref in REFS for r in ref])
    .lower()
    .replace(".", " ")
    .replace(",", " ")
    .split()
)


def test_embedding_similarity_sentence_model(tmp_path):
    import torch
    from transformers import BertConfig, BertModel

    path = tmp_path / "tiny-bert"
    n_vocab = _tiny_tokenizer(path, WORDS)
    torch.manual_seed(0)
    model = BertModel(
        BertConfig(
            vocab_size=n_vocab,
            hidden_size=16,
            num_hidden_layers=1,
            num_attention_heads=2,
            intermediate_size=32,
        )
    )
    model.save_pretrained(path)
    hyps = [h.lower() for h in HYPS]
    refs = [[r.lower().replace(".", "").replace(",", "") for r in ref] for ref in REFS]
    out = M.embedding_similarity(hyps, refs, model=str(path), batch_size=4)
    assert out["kind"] == "sentence" and out["per_item"].shape == (6,)
    # independent computation: one caption at a time (no padding), plain mean over tokens
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path)
    model.eval()

    def emb(t):
        with torch.no_grad():
            v = model(**tok(t, return_tensors="pt")).last_hidden_state[0].mean(0)
        return v / v.norm()

    expected = [np.mean([float(emb(h) @ emb(r)) for r in rs]) for h, rs in zip(hyps, refs)]
    np.testing.assert_allclose(out["per_item"], expected, atol=1e-5)
    same = M.embedding_similarity(hyps, [[h] for h in hyps], model=str(path))
    np.testing.assert_allclose(same["per_item"], 1.0, atol=1e-5)


def test_embedding_similarity_clip_text(tmp_path):
    import torch
    from transformers import CLIPConfig, CLIPModel

    path = tmp_path / "tiny-clip"
    n_vocab = _tiny_tokenizer(path, WORDS)
    torch.manual_seed(0)
    config = CLIPConfig(
        text_config={
            "vocab_size": n_vocab,
            "hidden_size": 16,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "intermediate_size": 32,
            "max_position_embeddings": 32,
            "eos_token_id": 2,
        },
        vision_config={
            "hidden_size": 16,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "intermediate_size": 32,
            "image_size": 32,
            "patch_size": 16,
        },
        projection_dim=8,
    )
    model = CLIPModel(config)
    model.save_pretrained(path)
    hyps = [h.lower() for h in HYPS]
    refs = [[h.lower(), "a dog"] for h in HYPS]
    out = M.embedding_metrics(
        hyps, refs, sentence_model=str(tmp_path / "missing"), clip_model=str(path)
    )
    assert out["SentenceSim"] == {"skipped": f"model not available: {tmp_path / 'missing'}"}
    clip = out["CLIP-T"]
    assert clip["kind"] == "clip"
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path)
    model.eval()

    def emb(t):
        with torch.no_grad():
            f = model.get_text_features(**tok(t, return_tensors="pt"))
        f = f if isinstance(f, torch.Tensor) else f.pooler_output
        return f[0] / f[0].norm()

    expected = [(1.0 + float(emb(h) @ emb("a dog"))) / 2 for h in hyps]
    np.testing.assert_allclose(clip["per_item"], expected, atol=1e-5)


def test_embedding_similarity_skipped_offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    out = M.embedding_similarity(["a dog"], [["a dog"]], model="braincap-test/not-a-model")
    assert out == {"skipped": "model not available: braincap-test/not-a-model"}



def test_embedding_models_load_once_per_process_and_a_missing_one_is_retried(monkeypatch):
    """Chapter 05 scores every run and condition with the same two models: loaded once."""
    from lib.metrics import embeddings

    calls = []

    def fake_load(model):
        calls.append(model)
        return None if model == "missing" else ("config", "tokenizer", f"net of {model}")

    monkeypatch.setattr(embeddings, "_load_uncached", fake_load)
    monkeypatch.setattr(embeddings, "_LOADED", {})
    assert embeddings._load("m") is embeddings._load("m")
    assert embeddings._load("missing") is None and embeddings._load("missing") is None
    assert calls == ["m", "missing", "missing"]

# ----------------------------------------------------------------- published captions
def test_reference_data_is_inside_the_repository():
    from lib.config import REPO_ROOT

    assert M.REFERENCE_ROOT == REPO_ROOT / "reference"
    assert (M.REFERENCE_RUNS / "LICENSE").read_text().startswith("MIT License")
    assert len(sorted(M.REFERENCE_RUNS.glob("pt_type*_mem*_captions.csv"))) == 6
    assert (M.REFERENCE_ROOT / "README.md").is_file()


def test_read_reference_captions_deduplicates():
    frame = M.read_reference_captions(M.REFERENCE_RUNS / "pt_type1_mem1_captions.csv")
    assert len(frame) == 982 and frame["nsd_id"].is_unique
    assert all(len(r) == len(set(r)) and len(r) >= 1 for r in frame["references"])
    assert frame["references"].map(len).median() == 5


def test_score_reference_runs_subset(tmp_path, meteor):
    shutil.copy(M.REFERENCE_RUNS / "pt_type1_mem1_captions.csv", tmp_path)
    cache = tmp_path / "scores.csv"
    table = M.score_reference_runs(tmp_path, n_items=100, cache_path=cache, meteor=meteor)
    assert list(table["condition"]) == ["decoded", "shuffled"]
    dec, shuf = table.iloc[0], table.iloc[1]
    assert dec["stage"] == "stage2 (contrastive)" and dec["memory"] == 1 and dec["n"] == 100
    assert 0.4 < dec["BLEU-1"] < 0.8 and 0.05 < dec["BLEU-4"] < 0.35
    assert 0.1 < dec["METEOR"] < 0.3 and 0.3 < dec["ROUGE-L"] < 0.6 and 0.2 < dec["CIDEr"] < 1.0
    assert shuf["CIDEr"] < dec["CIDEr"] / 2 and shuf["METEOR"] < dec["METEOR"]
    assert dec["p_CIDEr"] < 0.01 and dec["p_METEOR"] < 0.01 and np.isnan(shuf["p_CIDEr"])
    frame = M.read_reference_captions(tmp_path / "pt_type1_mem1_captions.csv").iloc[:100]
    direct = M.caption_metrics(
        frame["caption"].tolist(), frame["references"].tolist(), meteor=meteor
    )
    assert dec["CIDEr"] == pytest.approx(direct["CIDEr"])
    mtime = cache.stat().st_mtime_ns
    again = M.score_reference_runs(tmp_path, n_items=100, cache_path=cache)  # from the cache
    assert cache.stat().st_mtime_ns == mtime
    pd.testing.assert_frame_equal(again, table, check_dtype=False)


def _score_into(folder, cache):
    """score_reference_runs in a child process: the table's CIDEr column, to a file."""
    table = M.score_reference_runs(folder, cache_path=cache, meteor=object())
    (folder / f"result-{os.getpid()}.txt").write_text(" ".join(map(str, table["CIDEr"])))


def test_two_processes_score_the_released_captions_once(tmp_path, monkeypatch):
    """Two subjects' chapter 05 side by side: the second waits for the first's table instead
    of scoring the released captions again (the scoring here a stand-in that logs its calls;
    the real one takes about a minute)."""
    import time

    from lib.metrics import reference
    from tests.side_by_side import run_side_by_side

    for name in ("pt_type0_mem1_captions.csv", "pt_type1_mem1_captions.csv"):
        shutil.copy(M.REFERENCE_RUNS / name, tmp_path)
    log = tmp_path / "scored.txt"

    def fake_score(frame, name, typ, mem, meteor, shuffled, seed, n_permutations):
        with open(log, "a") as fh:
            fh.write(name + "\n")
        time.sleep(0.3)
        return [{"file": name, "CIDEr": float(len(frame) + typ)}]

    monkeypatch.setattr(reference, "_score_run", fake_score)
    assert run_side_by_side(_score_into, (tmp_path, tmp_path / "scores.csv")) == [0, 0]
    assert sorted(log.read_text().split()) == ["pt_type0_mem1_captions.csv",
                                               "pt_type1_mem1_captions.csv"]
    results = {p.read_text() for p in tmp_path.glob("result-*.txt")}
    assert len(results) == 1 and len(list(tmp_path.glob("result-*.txt"))) == 2


def test_published_table_and_scale():
    pub = M.load_published(M.REFERENCE_ROOT / "published_nsd_captioning.csv")
    assert {"method", "source", "BLEU-1", "CIDEr"} <= set(pub.columns)
    assert pub["source"].notna().all() and pub["BLEU-1"].between(30, 70).all()
    scaled = M.to_published_scale({"BLEU-1": 0.5, "CIDEr": 0.413, "n": 982, "per_item": {}})
    assert scaled == {"BLEU-1": 50.0, "CIDEr": pytest.approx(41.3), "n": 982}
    roi = M.read_roi_reference()
    assert len(roi) == 9 and set(roi["roi_family"]) == {"visual", "floc"}
    assert roi.loc[roi["roi"] == "floc-faces", "area"].item() == "faces"


@pytest.mark.parametrize("successes", [0, 1, 50, 99, 100])
def test_wilson_interval_holds_the_estimate(successes):
    """At 0 or n successes rounding must not push a bound past the estimate (error bars of
    length < 0 break matplotlib)."""
    lo, hi = M.wilson_interval(successes, 100)
    assert 0.0 <= lo <= successes / 100 <= hi <= 1.0
    if successes == 0:
        assert lo == 0.0
