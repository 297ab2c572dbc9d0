"""Stage 2: contrastive loss pieces, a training step, resume-after-kill, leakage checks."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import torch
from torch import nn

from lib.decoding import (
    BrainTextContrastive,
    LeakageError,
    PairData,
    Stage2Data,
    TrainConfig,
    assert_no_test_ids,
    contrastive_loss,
    encode_texts,
    fit,
    itc_similarity,
    load_weights,
    save_weights,
    soft_targets,
    split_train_val,
)

N_QUERY, HIDDEN, DIM, N_VOX = 4, 32, 16, 20


def _tiny_itm(seed=0):
    from transformers import (
        Blip2Config,
        Blip2ForImageTextRetrieval,
        Blip2QFormerConfig,
        Blip2VisionConfig,
        OPTConfig,
    )

    vc = Blip2VisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                           num_attention_heads=2, image_size=16, patch_size=8)
    qc = Blip2QFormerConfig(hidden_size=HIDDEN, intermediate_size=64, num_hidden_layers=2,
                            num_attention_heads=2, vocab_size=60, encoder_hidden_size=32,
                            use_qformer_text_input=True, max_position_embeddings=32)
    tc = OPTConfig(hidden_size=32, num_hidden_layers=1, ffn_dim=64, num_attention_heads=2,
                   vocab_size=60)
    cfg = Blip2Config(vision_config=vc.to_dict(), qformer_config=qc.to_dict(),
                      text_config=tc.to_dict(), num_query_tokens=N_QUERY,
                      image_text_hidden_size=DIM, image_token_index=59)
    torch.manual_seed(seed)
    return Blip2ForImageTextRetrieval(cfg).eval()


class _WordTokenizer:
    """Minimal word-level tokenizer with the call signature the text path uses."""

    def __init__(self, vocab_size=58):
        self.vocab_size = vocab_size

    def __call__(self, texts, padding, max_length, truncation, return_tensors):
        ids = torch.zeros(len(texts), max_length, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for i, t in enumerate(texts):
            toks = [1] + [2 + sum(map(ord, w)) % (self.vocab_size - 2) for w in t.split()]
            toks = toks[:max_length]
            ids[i, : len(toks)] = torch.tensor(toks)
            mask[i, : len(toks)] = 1
        return {"input_ids": ids, "attention_mask": mask}


def _brain_map(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(N_VOX, N_QUERY * HIDDEN), nn.Unflatten(1, (N_QUERY, HIDDEN)))


def _world(n_images=24, seed=0):
    """Images with latent codes; brain = noisy linear view; tokens = linear view; captions."""
    rng = np.random.default_rng(seed)
    words = ["red", "blue", "green", "circle", "square", "star", "face", "sky", "grass"]
    latent = rng.normal(size=(n_images, 6))
    X = latent @ rng.normal(size=(6, N_VOX)) + 0.3 * rng.normal(size=(n_images, N_VOX))
    tokens = (latent @ rng.normal(size=(6, N_QUERY * HIDDEN))).reshape(n_images, N_QUERY, HIDDEN)
    ids = np.arange(100, 100 + n_images)
    caps = {int(i): [" ".join(rng.choice(words, 4)) for _ in range(2)] for i in ids}
    return X.astype(np.float32), (0.3 * tokens).astype(np.float32), ids, caps


# ----------------------------------------------------------------------------- loss pieces


def test_itc_similarity_is_max_over_queries():
    rng = np.random.default_rng(0)
    q = rng.normal(size=(3, 4, 5))
    t = rng.normal(size=(2, 5))
    expected = np.array([[max(q[i, k] @ t[j] for k in range(4)) for j in range(2)]
                         for i in range(3)])
    got = itc_similarity(torch.tensor(q), torch.tensor(t)).numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-12)


def test_soft_targets_by_hand():
    got = soft_targets(torch.tensor([7, 8, 7]), label_smoothing=0.1).numpy()
    hard = np.array([[0.5, 0, 0.5], [0, 1, 0], [0.5, 0, 0.5]])
    np.testing.assert_allclose(got, 0.9 * hard + 0.1 / 3, rtol=1e-6)
    np.testing.assert_allclose(got.sum(1), 1.0, rtol=1e-6)


def test_contrastive_loss_by_hand():
    rng = np.random.default_rng(1)
    q = rng.normal(size=(3, 2, 4))
    q /= np.linalg.norm(q, axis=-1, keepdims=True)
    t = rng.normal(size=(3, 4))
    t /= np.linalg.norm(t, axis=-1, keepdims=True)
    ids = np.array([5, 6, 5])
    temp = 0.07
    sim = np.max(np.einsum("aqd,bd->abq", q, t), axis=-1) / temp
    tgt = (ids[:, None] == ids[None, :]).astype(float)
    tgt = 0.9 * tgt / tgt.sum(1, keepdims=True) + 0.1 / 3

    def ce(s):
        logp = s - np.log(np.exp(s).sum(1, keepdims=True))
        return -(logp * tgt).sum(1).mean()

    expected = (ce(sim) + ce(sim.T)) / 2
    got = contrastive_loss(torch.tensor(q), torch.tensor(t), torch.tensor(ids), temp, 0.1)
    assert float(got) == pytest.approx(expected, rel=1e-10)


def test_text_features_match_blip2_retrieval_forward():
    """Our text path equals Blip2ForImageTextRetrieval's ITC text embeddings."""
    itm = _tiny_itm()
    model = BrainTextContrastive(_brain_map(), itm)
    tok = _WordTokenizer()
    caps = ["a red circle", "two blue stars on grass"]
    ids = tok(caps, padding="max_length", max_length=10, truncation=True, return_tensors="pt")
    n = itm.config.num_query_tokens
    full_ids = torch.cat([torch.full((2, n), 59), ids["input_ids"]], dim=1)
    full_mask = torch.cat([torch.ones(2, n, dtype=torch.long), ids["attention_mask"]], dim=1)
    with torch.no_grad():
        ref = itm(pixel_values=torch.randn(2, 3, 16, 16), input_ids=full_ids,
                  attention_mask=full_mask).text_embeds
    ours = encode_texts(model, tok, caps, max_length=10)
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-6)


def test_forward_loss_is_weighted_sum():
    X, tokens, ids, caps = _world(8)
    model = BrainTextContrastive(_brain_map(), _tiny_itm(), mse_weight=0.7,
                                 contrastive_weight=0.3)
    tf = encode_texts(model, _WordTokenizer(), [caps[int(i)][0] for i in ids], max_length=10)
    out = model(torch.tensor(X), torch.tensor(tokens), torch.tensor(ids), text_feats=tf)
    pred = model.brain_map(torch.tensor(X))
    mse = ((pred - torch.tensor(tokens)) ** 2).mean()
    assert float(out.mse.detach()) == pytest.approx(float(mse.detach()), rel=1e-6)
    assert float(out.contrastive.detach()) == pytest.approx(
        (float(out.brain_text.detach()) + float(out.image_text.detach())) / 2, rel=1e-6)
    assert float(out.loss.detach()) == pytest.approx(
        0.7 * float(mse.detach()) + 0.3 * float(out.contrastive.detach()), rel=1e-6)


def test_stage1_module_left_untouched_and_itm_frozen():
    bm = _brain_map()
    before = [p.detach().clone() for p in bm.parameters()]
    model = BrainTextContrastive(bm, _tiny_itm())
    with torch.no_grad():
        for p in model.brain_map.parameters():
            p.add_(1.0)
    for a, b in zip(before, bm.parameters()):
        torch.testing.assert_close(a, b)
    assert not any(p.requires_grad for p in model.qformer.parameters())
    names = {g["name"]: g for g in model.param_groups(1e-3, 0.2)}
    assert names["brain_map"]["lr"] == pytest.approx(2e-4)


# ----------------------------------------------------------------------------- training


def _data(model, n_images=24, seed=0):
    X, tokens, ids, caps = _world(n_images, seed)
    tr_ids, val_ids = split_train_val(ids, 0.25, seed=0)
    tok = _WordTokenizer()
    out = []
    for keep in (tr_ids, val_ids):
        m = np.isin(ids, keep)
        d = PairData.build(X[m], tokens[m], ids[m], caps)
        d.text_feats = encode_texts(model, tok, d.captions, max_length=10)
        out.append(d)
    return out


def _config(**kw):
    base = {"lr": 3e-3, "batch_size": 8, "grad_accum": 2, "epochs": 3, "warmup_steps": 2,
            "eval_every": 2, "checkpoint_every": 2, "seed": 0, "max_length": 10}
    base.update(kw)
    return TrainConfig(**base)


def test_training_reduces_loss(tmp_path):
    torch.manual_seed(0)
    model = BrainTextContrastive(_brain_map(), _tiny_itm())
    train, val = _data(model)
    res = fit(model, Stage2Data(train, val, test_ids=[1, 2]), _config(epochs=6), tmp_path,
              progress=False)
    tr = [h for h in res.history if h["split"] == "train"]
    va = [h for h in res.history if h["split"] == "val"]
    assert np.mean([h["loss"] for h in tr[-3:]]) < np.mean([h["loss"] for h in tr[:3]])
    assert va[-1]["loss"] < va[0]["loss"]
    assert res.best_path.exists() and (tmp_path / "history.json").exists()
    assert json.loads((tmp_path / "history.json").read_text())[0]["step"] == 0


class _Kill(RuntimeError):
    pass


@pytest.mark.parametrize(("kill_at", "update"), [(3, "full"), (4, "full"), (3, "low_rank")])
def test_resume_after_kill_is_bit_identical(tmp_path, kill_at, update):
    """Killed at step k (checkpoints every 2 steps), resumed: same final weights bit for bit."""
    torch.manual_seed(0)

    def make():
        return BrainTextContrastive(_brain_map(), _tiny_itm(), brain_update=update, rank=3)

    ref = make()
    train, val = _data(ref)
    cfg = _config()
    res_ref = fit(ref, Stage2Data(train, val, test_ids=[1]), cfg, tmp_path / "ref", progress=False)

    def killer(step, rec):
        if step == kill_at:
            raise _Kill

    run = make()
    with pytest.raises(_Kill):
        fit(run, Stage2Data(train, val, test_ids=[1]), cfg, tmp_path / "run", callback=killer,
            progress=False)
    torch.manual_seed(123)  # the global RNG is restored from the checkpoint
    fresh = make()
    res = fit(fresh, Stage2Data(train, val, test_ids=[1]), cfg, tmp_path / "run", progress=False)
    assert res.resumed_from == (kill_at // 2) * 2
    from safetensors.torch import load_file

    saved = load_file(str(tmp_path / "run" / "checkpoint.safetensors"))
    has_map = any(k.startswith("model.brain_map.") for k in saved)
    assert has_map == (update == "full")  # a frozen map is never written to a checkpoint
    assert res.steps == res_ref.steps
    for (name, a), (_, b) in zip(ref.state_dict().items(), fresh.state_dict().items()):
        assert torch.equal(a, b), name
    assert [h["loss"] for h in res.history] == [h["loss"] for h in res_ref.history]
    best = make()
    load_weights(best, res.best_path)
    best_ref = make()
    load_weights(best_ref, res_ref.best_path)
    for a, b in zip(best.parameters(), best_ref.parameters()):
        assert torch.equal(a, b)


def test_saved_weights_are_the_same_bytes_every_time(tmp_path):
    """The best step's file is byte-for-byte reproducible, its metadata included: safetensors
    writes several header entries in a random order, so save_weights stores one."""
    from safetensors import safe_open

    torch.manual_seed(0)
    model = nn.Linear(3, 2)
    meta = {"step": 200, "loss": 0.5, "mse": 0.1, "top1": 0.6, "chance": 0.01}
    files = [save_weights(model, tmp_path / f"best{i}.safetensors", meta) for i in range(5)]
    assert len({f.read_bytes() for f in files}) == 1
    with safe_open(str(files[0]), framework="pt") as f:
        assert json.loads(f.metadata()["json"]) == meta
    copy = nn.Linear(3, 2)
    load_weights(copy, files[0])
    assert torch.equal(copy.weight, model.weight) and torch.equal(copy.bias, model.bias)


def _expected_stop(history, patience, total):
    """The step where early stopping must end a run whose validation losses are ``history``'s."""
    best, bad = None, 0
    for h in (h for h in history if h["split"] == "val"):
        if best is None or h["loss"] < best:
            best, bad = h["loss"], 0
        else:
            bad += 1
            if bad >= patience:
                return h["step"]
    return total


def test_early_stopping_truncates_the_same_trajectory(tmp_path):
    """With patience, training stops after that many validations without a better loss; until
    then it is the full run's trajectory bit for bit (same records; the best weights are the
    full run's weights at that step), and a stopped run resumed does not train again."""
    cfg = _config(lr=0.3, epochs=10, eval_every=1, checkpoint_every=1, patience=None)

    def model():
        torch.manual_seed(0)
        return BrainTextContrastive(_brain_map(), _tiny_itm())

    full_model = model()
    train, val = _data(full_model)
    data = Stage2Data(train, val, test_ids=[1])
    weights = {}

    def snapshot(step, rec):
        weights[step] = {k: v.clone() for k, v in full_model.state_dict().items()}

    full = fit(full_model, data, cfg, tmp_path / "full", callback=snapshot, progress=False)
    stop = _expected_stop(full.history, 2, full.steps)
    early = fit(model(), data, replace(cfg, patience=2), tmp_path / "early", progress=False)
    assert 0 < early.best_step < stop < full.steps  # the settings make the test bite
    assert (early.steps, early.stopped_early, full.stopped_early) == (stop, True, False)
    assert early.history == [h for h in full.history if h["step"] <= stop]
    best = model()
    load_weights(best, early.best_path)
    for name, value in best.state_dict().items():
        assert torch.equal(value, weights[early.best_step][name]), name
    again = fit(model(), data, replace(cfg, patience=2), tmp_path / "early", progress=False)
    assert (again.resumed_from, again.steps, again.history) == (stop, stop, early.history)


def test_resume_discards_a_checkpoint_of_other_settings(tmp_path):
    model = BrainTextContrastive(_brain_map(), _tiny_itm())
    train, val = _data(model)
    fit(model, Stage2Data(train, val, test_ids=[1]), _config(epochs=1), tmp_path, progress=False)
    fresh = BrainTextContrastive(_brain_map(), _tiny_itm())
    with pytest.warns(UserWarning, match="other training settings"):
        result = fit(fresh, Stage2Data(train, val, test_ids=[1]), _config(epochs=1, lr=1.0),
                     tmp_path, progress=False)
    assert result.resumed_from is None


def test_leakage_assertion_fires(tmp_path):
    model = BrainTextContrastive(_brain_map(), _tiny_itm())
    train, val = _data(model)
    leaked = int(val.image_ids[0])
    with pytest.raises(LeakageError, match="validation"):
        fit(model, Stage2Data(train, val, test_ids=[leaked]), _config(), tmp_path, progress=False)
    with pytest.raises(LeakageError, match="training"):
        fit(model, Stage2Data(train, val, test_ids=[int(train.image_ids[3])]), _config(),
            tmp_path, progress=False)
    with pytest.raises(ValueError, match="test_ids"):
        fit(model, Stage2Data(train, val, test_ids=None), _config(), tmp_path, progress=False)
    with pytest.raises(LeakageError):
        assert_no_test_ids([1, 2, 3], [3], "x")


def test_train_config_overrides_and_unknown_key():
    config = TrainConfig.from_overrides({"lr": 1e-4, "label_smoothing": 0.0}, epochs=5, seed=2)
    assert (config.lr, config.label_smoothing, config.epochs, config.seed) == (1e-4, 0.0, 5, 2)
    assert config.batch_size == TrainConfig().batch_size  # the rest are the defaults
    assert config.model_kwargs()["label_smoothing"] == 0.0 and config.model_kwargs()["seed"] == 2
    assert TrainConfig.from_overrides(None) == TrainConfig()
    with pytest.raises(ValueError, match=r"stage2_overrides: unknown key\(s\) \['lrr'\]; "
                                         r"valid keys: .*\blr\b.*warmup_steps"):
        TrainConfig.from_overrides({"lrr": 1e-4})
    with pytest.raises(ValueError, match=r"\['epochs'\] have a parameter of their own"):
        TrainConfig.from_overrides({"epochs": 4}, epochs=5)
    with pytest.raises(ValueError, match="must be a dict"):
        TrainConfig.from_overrides("lr=1e-4")


def test_fingerprint_covers_every_setting_that_changes_training():
    """A checkpoint trained with other loss weights must not be resumed; how often validation
    runs does not matter."""
    base = TrainConfig()
    assert TrainConfig(eval_every=7).fingerprint() == base.fingerprint()
    for change in ({"lr": 0.5}, {"label_smoothing": 0.0}, {"mse_weight": 0.5},
                   {"contrastive_weight": 0.5}, {"val_fraction": 0.2}, {"train_itm": True}):
        assert TrainConfig(**change).fingerprint() != base.fingerprint(), change


def test_split_train_val_disjoint_and_reproducible():
    ids = np.arange(50)
    a, b = split_train_val(ids, 0.2, seed=3)
    a2, b2 = split_train_val(ids, 0.2, seed=3)
    assert np.array_equal(a, a2) and np.array_equal(b, b2)
    assert len(b) == 10 and not np.intersect1d(a, b).size
    assert np.array_equal(np.union1d(a, b), ids)


# ----------------------------------------------------------------------------- retrieval


def test_brain_text_retrieval_by_hand():
    from lib.decoding import brain_text_retrieval

    rng = np.random.default_rng(0)
    n, q, h, d = 6, 3, 5, 4
    proj = nn.Linear(h, d)
    tokens = rng.normal(size=(n, q, h)).astype(np.float32)
    text = torch.nn.functional.normalize(torch.randn(n, d), dim=-1)
    out = brain_text_retrieval(tokens, text, proj, k=300, repeat_averaged=True)
    with torch.no_grad():
        b = torch.nn.functional.normalize(proj(torch.tensor(tokens)), dim=-1).numpy()
    t = text.numpy()
    sim = np.array([[max(b[i, j] @ t[m] for j in range(q)) for m in range(n)] for i in range(n)])
    b2t = np.mean([sim[i, i] > np.delete(sim[i], i).max() for i in range(n)])
    t2b = np.mean([sim[i, i] > np.delete(sim[:, i], i).max() for i in range(n)])
    assert out["brain_to_text"]["mean"] == pytest.approx(b2t)
    assert out["text_to_brain"]["mean"] == pytest.approx(t2b)
    assert out["chance"] == pytest.approx(1 / n)
    assert out["n_draws"] == 1 and out["options"]["similarity"].startswith("max over query")


def test_memory_window_decoder_trains(tmp_path):
    """A stage-1 decoder with 2 memory blocks: X holds them side by side."""
    from lib.decoding.decoder import QueryTokenDecoder, load_decoder

    dec = QueryTokenDecoder([N_VOX // 2, N_VOX // 2], N_QUERY, HIDDEN, {"memory_size": 2})
    model = BrainTextContrastive(dec, _tiny_itm())
    train, val = _data(model)
    X = train.X[:3]
    expected = dec([X[:, : N_VOX // 2], X[:, N_VOX // 2:]])
    torch.testing.assert_close(model.predict_tokens(X), expected)
    fit(model, Stage2Data(train, val, test_ids=[1]), _config(epochs=1), tmp_path, progress=False)
    assert not torch.equal(model.brain_map.weight, dec.weight)
    model.brain_map.save(tmp_path / "dec")
    back = load_decoder(tmp_path / "dec")
    torch.testing.assert_close(back.weight, model.brain_map.weight)


def test_resume_discards_a_checkpoint_of_other_starting_weights(tmp_path):
    """A checkpoint from another stage-1 map (e.g. before the toy models were rebuilt) is stale."""
    model = BrainTextContrastive(_brain_map(seed=0), _tiny_itm())
    train, val = _data(model)
    fit(model, Stage2Data(train, val, test_ids=[1]), _config(epochs=1), tmp_path, progress=False)
    other = BrainTextContrastive(_brain_map(seed=1), _tiny_itm())
    with pytest.warns(UserWarning, match="starting weights or data"):
        result = fit(other, Stage2Data(train, val, test_ids=[1]), _config(epochs=1), tmp_path,
                     progress=False)
    assert result.resumed_from is None


def test_memory_accounting_reads_stage2_overrides():
    """The preflight's accounting sees a batch size set through ``stage2_overrides``."""
    from lib.decoding import memory_table

    shapes = {"n_voxels": 1000, "n_train_trials": 2000, "n_train_images": 500,
              "n_test_images": 50}
    via_dict = memory_table({"stage2_overrides": {"batch_size": 256}}, shapes)
    via_key = memory_table({"stage2_batch_size": 256}, shapes)
    default = memory_table({}, shapes)
    assert via_dict.equals(via_key)
    assert via_dict["bytes"].sum() > default["bytes"].sum()
