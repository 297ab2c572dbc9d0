"""Tests of the toy models: they reload by path with the standard classes, behave like the
real BLIP-2 checkpoints (processor layout, generation), and training is repeatable."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from lib.toyworld.models import MODEL_PRESETS, train_all
from lib.toyworld.models import blip2 as B
from lib.toyworld.models.data import label_names, make_corpus, scene_labels
from lib.toyworld.models.tokenizer import build_tokenizer


@pytest.fixture(scope="module")
def models_root(tmp_path_factory):
    """Every toy model of the ``micro`` preset, trained once for this module."""
    root = tmp_path_factory.mktemp("toymodels") / "models"
    report = train_all(root, "micro", seed=0)
    return root, report


@pytest.fixture(scope="module")
def val_corpus():
    return make_corpus(6, seed=0, stream=1)


def test_tokenizer_roundtrip(tmp_path):
    from transformers import AutoTokenizer

    tok = build_tokenizer(["A red circle above the sign ABC.", "Two shapes in a green field."])
    tok.save_pretrained(tmp_path)
    tok2 = AutoTokenizer.from_pretrained(tmp_path)
    ids = tok2("a red circle in a green field")["input_ids"]
    assert ids[0] == tok2.bos_token_id
    assert tok2.decode(ids, skip_special_tokens=True) == "a red circle in a green field"
    # the letters written on signs are not vocabulary; the image placeholder is one token
    assert tok2("the sign ABC")["input_ids"][-1] == tok2.unk_token_id
    assert tok2("<image><image>", add_special_tokens=False)["input_ids"] == [
        tok2.convert_tokens_to_ids("<image>")] * 2
    assert len({tok2.pad_token_id, tok2.bos_token_id, tok2.eos_token_id, tok2.unk_token_id}) == 4


def test_scene_labels_by_hand():
    from lib.toyworld.scenes import Scene, SceneObject

    scene = Scene("water", (SceneObject("star", "red", 0.3, 0.1, 0.9),
                            SceneObject("face", "white", 0.3, 0.5, 0.5)))
    y = scene_labels(scene)
    on = {n for n, v in zip(label_names(), y) if v}
    assert on == {"place=water", "kind=star", "kind=face", "color=red", "color=white",
                  "n_objects=2", "star+red", "face+white", "star@20", "face@11", "red@20",
                  "white@11"}


def test_blip2_folders_load_like_the_real_checkpoints(models_root, val_corpus):
    from transformers import (
        AutoProcessor,
        Blip2ForConditionalGeneration,
        Blip2ForImageTextRetrieval,
        Blip2Processor,
    )

    root, _ = models_root
    for name, cls in (("blip2-toy-opt", Blip2ForConditionalGeneration),
                      ("blip2-toy-itm", Blip2ForImageTextRetrieval)):
        folder = root / name
        assert (folder / "model.safetensors").exists()
        model = cls.from_pretrained(folder)
        proc = Blip2Processor.from_pretrained(folder)
        assert isinstance(AutoProcessor.from_pretrained(folder), Blip2Processor)
        nq = model.config.num_query_tokens
        assert proc.num_query_tokens == nq
        inputs = proc(images=list(val_corpus.images[:2]), text=["a red circle", "two shapes"],
                      padding=True, return_tensors="pt")
        ids = inputs["input_ids"]
        assert (ids[:, :nq] == model.config.image_token_index).all()
        assert (ids[:, nq] == proc.tokenizer.bos_token_id).all()
        assert int((ids == model.config.image_token_index).sum()) == 2 * nq
        size = MODEL_PRESETS["micro"]["image_size"]
        assert tuple(inputs["pixel_values"].shape) == (2, 3, size, size)


def test_generate_runs_and_matches_fast_training_path(models_root, val_corpus):
    from transformers import Blip2ForConditionalGeneration, Blip2Processor

    root, _ = models_root
    model = Blip2ForConditionalGeneration.from_pretrained(root / "blip2-toy-opt").eval()
    proc = Blip2Processor.from_pretrained(root / "blip2-toy-opt")
    inputs = proc(images=list(val_corpus.images[:3]), return_tensors="pt")
    out = model.generate(**inputs, max_new_tokens=6)
    texts = proc.batch_decode(out, skip_special_tokens=True)
    assert len(texts) == 3 and all(isinstance(t, str) for t in texts)
    nq = model.config.num_query_tokens
    assert (out[:, :nq] == model.config.image_token_index).all()
    assert nq + 1 < out.shape[1] <= nq + 1 + 6
    # the training shortcut (cached Q-Former outputs) equals the model's own forward
    inputs = proc(images=list(val_corpus.images[:3]), text=[c[0] for c in val_corpus.captions[:3]],
                  padding=True, return_tensors="pt")
    with torch.inference_mode():
        ref = model(**inputs).logits
        q = B.batched_query_outputs(model,
                            B.image_encoder_outputs(model.vision_model, inputs["pixel_values"]))
        fast = B.lm_logits(model, q, inputs["input_ids"], inputs["attention_mask"])
    torch.testing.assert_close(fast, ref, rtol=1e-4, atol=1e-4)


def test_captioner_shares_the_itm_vision_side(models_root, val_corpus):
    from transformers import (
        Blip2ForConditionalGeneration,
        Blip2ForImageTextRetrieval,
        Blip2Processor,
    )

    root, _ = models_root
    itm = Blip2ForImageTextRetrieval.from_pretrained(root / "blip2-toy-itm").eval()
    opt = Blip2ForConditionalGeneration.from_pretrained(root / "blip2-toy-opt").eval()
    assert opt.config.use_decoder_only_language_model
    assert itm.config.qformer_config.use_qformer_text_input
    px = Blip2Processor.from_pretrained(root / "blip2-toy-itm")(
        images=list(val_corpus.images[:2]), return_tensors="pt")["pixel_values"]
    torch.testing.assert_close(
        B.batched_query_outputs(itm, B.image_encoder_outputs(itm.vision_model, px)),
        B.batched_query_outputs(opt, B.image_encoder_outputs(opt.vision_model, px)))


def test_zoo_json_and_every_zoo_model_reloads(models_root, val_corpus):
    from transformers import AutoImageProcessor, AutoModel, AutoModelForCausalLM, AutoTokenizer

    root, report = models_root
    zoo = json.loads((root / "zoo.json").read_text())
    assert zoo == report["zoo"]
    assert len({r["name"] for r in zoo}) == len(zoo)
    trained = [r for r in zoo if r["trained"]]
    vision_fams = {r["family"] for r in trained if r["modality"] == "vision"}
    assert len(vision_fams) >= 2
    for fam in vision_fams:
        rows = [r for r in trained if r["family"] == fam]
        assert len(rows) >= 3 and len({r["n_params"] for r in rows}) == len(rows)
        assert any(not r["trained"] and r["family"] == fam for r in zoo)
    assert sum(r["modality"] == "language" for r in trained) >= 3
    assert any(r["modality"] == "language" and not r["trained"] for r in zoo)
    for row in zoo:
        path = root / row["path"]
        assert set(row) == {"name", "path", "family", "modality", "n_params", "trained"}
        if row["modality"] == "vision":
            model = AutoModel.from_pretrained(path, output_hidden_states=True).eval()
            proc = AutoImageProcessor.from_pretrained(path)
            inputs = proc(list(val_corpus.images[:2]), return_tensors="pt")
            with torch.inference_mode():
                hs = model(**inputs).hidden_states
        else:
            model = AutoModelForCausalLM.from_pretrained(path).eval()
            tok = AutoTokenizer.from_pretrained(path)
            inputs = tok(["a red circle in the sky"], return_tensors="pt")
            with torch.inference_mode():
                hs = model(**inputs, output_hidden_states=True).hidden_states
        assert len(hs) >= 2 and hs[-1].shape[0] == inputs[next(iter(inputs))].shape[0]
        # n_params counts the saved backbone; AutoModel adds ViT's (unused, untrained) pooler
        named = {id(p): (k, p) for k, p in model.base_model.named_parameters()}.values()
        n = sum(p.numel() for k, p in named if not k.startswith("pooler."))
        assert n == row["n_params"]


def test_report_times_every_phase_and_each_family_pixels_once(models_root):
    """TRAINING.json: wall and CPU time of the corpus, each BLIP-2 step and each zoo model;
    one image-processor pass per vision family (its three sizes share the pixels)."""
    root, report = models_root
    phases = report["phases"]
    assert json.loads((root / "TRAINING.json").read_text())["phases"] == phases
    names = [r["name"] for r in report["zoo"]]
    assert {f"vision/{n}" for n in names if not n.startswith("opt")} <= set(phases)
    assert {f"language/{n}" for n in names if n.startswith("opt")} <= set(phases)
    assert sum(k.startswith("blip2/") for k in phases) == 4
    assert [k for k in phases if k.endswith(" pixels")] == ["vision/vit pixels",
                                                           "vision/resnet pixels"]
    assert all(set(v) == {"wall_s", "cpu_s"} and v["wall_s"] >= 0 for v in phases.values())
    assert sum(v["cpu_s"] for v in phases.values()) <= report["total"]["cpu_s"] + 0.5
    from lib.toyworld.models._train import auto_threads

    assert report["threads"] == auto_threads() >= 1  # threads="auto"


def test_trained_differs_from_untrained(models_root):
    from safetensors.torch import load_file

    root, _ = models_root
    a = load_file(root / "vision" / "vit-l" / "model.safetensors")
    b = load_file(root / "vision" / "vit-l-untrained" / "model.safetensors")
    assert a.keys() == b.keys()
    assert any(not torch.equal(a[k], b[k]) for k in a)


def test_training_is_repeatable():
    corpus = make_corpus(8, seed=3, stream=0)
    tok = build_tokenizer([c for caps in corpus.captions for c in caps])
    spec = {**MODEL_PRESETS["micro"]["blip2"], "itm_batch": 4, "opt_batch": 8,
            "opt_pairs_per_epoch": 16}
    proc = B.make_processor(tok, 64, spec["num_query_tokens"])
    runs = [B.train_blip2(corpus, proc, spec, 64, seed=5) for _ in range(2)]
    (itm1, opt1, h1), (itm2, opt2, h2) = runs
    assert h1["itm_loss"] == h2["itm_loss"] and h1["opt_loss"] == h2["opt_loss"]
    for a, b in ((itm1, itm2), (opt1, opt2)):
        sa, sb = a.state_dict(), b.state_dict()
        for k in sa:
            assert torch.equal(sa[k], sb[k]), k
    itm3, _, _ = B.train_blip2(corpus, proc, spec, 64, seed=6)
    assert any(not torch.equal(v, itm3.state_dict()[k]) for k, v in itm1.state_dict().items())


def test_itc_shortcut_matches_the_model_forward(models_root, val_corpus):
    from transformers import Blip2ForImageTextRetrieval, Blip2Processor

    root, _ = models_root
    itm = Blip2ForImageTextRetrieval.from_pretrained(root / "blip2-toy-itm").eval()
    proc = Blip2Processor.from_pretrained(root / "blip2-toy-itm")
    texts = [c[0] for c in val_corpus.captions[:4]]
    inputs = proc(images=list(val_corpus.images[:3]), text=texts, padding=True, return_tensors="pt")
    with torch.inference_mode():
        ref = itm(**inputs, use_image_text_matching_head=False).logits_per_image
        encoded = B.image_encoder_outputs(itm.vision_model, inputs["pixel_values"])
        q = B.batched_query_outputs(itm, encoded)
        sim, _ = B.itc_logits(itm, q, inputs["input_ids"], inputs["attention_mask"])
    assert tuple(ref.shape) == (3, 4)
    torch.testing.assert_close(sim, ref, rtol=1e-5, atol=1e-5)


def test_model_scenes_are_apart_from_the_experiment():
    from lib.toyworld.scenes import sample_scenes

    ours = make_corpus(5, seed=0, stream=0).scenes
    assert ours != sample_scenes(5, np.random.default_rng(0))
    assert ours == make_corpus(5, seed=0, stream=0).scenes


def test_workers_train_the_same_models_as_one_process(tmp_path):
    """Training in two worker processes gives the weights, quality and zoo rows of training
    in this process on as many threads per model (a process changes nothing but the clock)."""
    from lib.toyworld.models import training_workers

    spec = {**MODEL_PRESETS["micro"], "n_train": 32, "n_val": 8}
    spec["vision"] = {**spec["vision"], "n_train": 32}
    here = train_all(tmp_path / "here", spec, seed=1, threads=1, workers=1)
    apart = train_all(tmp_path / "apart", spec, seed=1, threads=2, workers=2)
    assert (here["workers"], apart["workers"], apart["threads"]) == (1, 2, 1)
    assert apart["zoo"] == here["zoo"]
    assert json.dumps(apart["quality"], sort_keys=True) == json.dumps(here["quality"],
                                                                     sort_keys=True)
    assert list(apart["phases"]) == list(here["phases"])
    files = sorted(p.relative_to(tmp_path / "here")
                   for p in (tmp_path / "here").rglob("*.safetensors"))
    assert len(files) == 14
    for f in files:
        assert (tmp_path / "apart" / f).read_bytes() == (tmp_path / "here" / f).read_bytes(), f
    # the workers' CPU time is counted in the total
    assert apart["total"]["cpu_s"] >= sum(v["cpu_s"] for v in apart["phases"].values()) - 0.5
    assert training_workers(8, 4, 4) <= 4 and training_workers(1, 4, 4) == 1
    assert training_workers(2, 1, 4) == 1 and training_workers(2, 4, 1) == 1


def test_a_script_without_main_guard_gets_a_clear_error(tmp_path):
    """Workers start with 'spawn', which re-imports the calling script: a script with no
    ``if __name__ == "__main__":`` guard must get an error that says so, not a bare
    BrokenProcessPool."""
    import subprocess
    import sys

    from lib.config import REPO_ROOT

    script = tmp_path / "train_no_guard.py"
    script.write_text(
        "from lib.toyworld.models import MODEL_PRESETS, train_all\n"
        "spec = {**MODEL_PRESETS['micro'], 'n_train': 16, 'n_val': 4}\n"
        "spec['vision'] = {**spec['vision'], 'n_train': 16}\n"
        f"train_all({str(tmp_path / 'models')!r}, spec, threads=2, workers=2, parts=['vision'])\n")
    done = subprocess.run([sys.executable, str(script)], cwd=REPO_ROOT, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode != 0
    assert "RuntimeError: a toy-model training process died" in done.stderr
    assert "workers=1" in done.stderr
