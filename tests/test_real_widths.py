"""Real widths, small depth: BLIP-2 (OPT and Flan-T5) and ITM checkpoints with the released
checkpoints' widths (vision 1408 at 224 px with patch 14, Q-Former 768 with 32 query tokens,
OPT-2.7B hidden 2560 and its 50,272-word vocabulary, Flan-T5-XL d_model 2048 and 32,128 words,
ITM embedding 256) but one layer each and random weights, built from configs. Feature
extraction -> stage 1 -> a stage-2 step -> batched captions run through the project's own
functions on the micro world; shapes and dtypes are checked, bf16 where it runs on CPU."""

from __future__ import annotations

import numpy as np
import pytest
import torch

pytestmark = pytest.mark.slow

N_QUERY, QFORMER, VISION, OPT_HIDDEN, OPT_VOCAB = 32, 768, 1408, 2560, 50272
T5_D_MODEL, T5_VOCAB, ITM_DIM = 2048, 32128, 256


def _vision_qformer(text_input: bool, vocab: int):
    from transformers import Blip2QFormerConfig, Blip2VisionConfig

    vision = Blip2VisionConfig(hidden_size=VISION, intermediate_size=6144, num_hidden_layers=1,
                               num_attention_heads=16, image_size=224, patch_size=14)
    qformer = Blip2QFormerConfig(hidden_size=QFORMER, intermediate_size=3072,
                                 num_hidden_layers=1, num_attention_heads=12,
                                 encoder_hidden_size=VISION, vocab_size=vocab,
                                 use_qformer_text_input=text_input)
    return vision.to_dict(), qformer.to_dict()


def _processor(kind: str):
    from transformers import Blip2Processor, BlipImageProcessor

    from tests.tiny_blip2 import _tokenizer

    tokenizer, vocab = _tokenizer(kind)
    images = BlipImageProcessor(size={"height": 224, "width": 224})
    return Blip2Processor(image_processor=images, tokenizer=tokenizer,
                          num_query_tokens=N_QUERY), vocab


def _captioner(path, kind: str):
    from transformers import Blip2Config, Blip2ForConditionalGeneration, OPTConfig, T5Config

    processor, vocab = _processor(kind)
    vision, qformer = _vision_qformer(False, 30522)
    if kind == "opt":
        text = OPTConfig(vocab_size=OPT_VOCAB, hidden_size=OPT_HIDDEN, ffn_dim=10240,
                         num_hidden_layers=1, num_attention_heads=32, word_embed_proj_dim=2560,
                         bos_token_id=vocab["</s>"], eos_token_id=vocab["</s>"],
                         pad_token_id=vocab["<pad>"])
    else:
        text = T5Config(vocab_size=T5_VOCAB, d_model=T5_D_MODEL, d_kv=64, d_ff=5120,
                        num_layers=1, num_decoder_layers=1, num_heads=32,
                        feed_forward_proj="gated-gelu", tie_word_embeddings=False,
                        decoder_start_token_id=vocab["<pad>"], eos_token_id=vocab["</s>"],
                        pad_token_id=vocab["<pad>"])
    config = Blip2Config(vision_config=vision, qformer_config=qformer,
                         text_config=text.to_dict(), num_query_tokens=N_QUERY,
                         image_token_index=vocab["<image>"])
    torch.manual_seed(0)
    Blip2ForConditionalGeneration(config).save_pretrained(path)
    processor.save_pretrained(path)
    return path


def _itm(path):
    from transformers import Blip2Config, Blip2ForImageTextRetrieval

    processor, vocab = _processor("opt")
    vision, qformer = _vision_qformer(True, 30523)
    config = Blip2Config(vision_config=vision, qformer_config=qformer,
                         num_query_tokens=N_QUERY, image_text_hidden_size=ITM_DIM,
                         image_token_index=vocab["<image>"])
    torch.manual_seed(1)
    Blip2ForImageTextRetrieval(config).save_pretrained(path)
    processor.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def prepared(micro_root, tmp_path_factory):
    from lib.nsd import PreparedSubject, prepare_subject

    return PreparedSubject(prepare_subject(micro_root / "nsd", 1,
                                           tmp_path_factory.mktemp("prepared")))


def test_real_widths_pipeline(prepared, tmp_path):
    from lib.decoding import (
        BrainTextContrastive,
        PairData,
        Stage2Data,
        TrainConfig,
        encode_texts,
        fit,
        load_itm,
    )
    from lib.decoding.generate import generate_captions, load_captioner
    from lib.decoding.memory import model_sizes
    from lib.decoding.stage1 import fit_stage1
    from lib.features.qformer import load_qformer_encoder, qformer_features

    opt = _captioner(tmp_path / "opt", "opt")
    # feature extraction at the real widths (a subset of images keeps it fast)
    train_ids, test_ids = prepared.image_ids("train"), prepared.image_ids("test")
    ids = np.concatenate([train_ids[:32], test_ids])
    encoder, image_processor = load_qformer_encoder(opt, device="cpu")
    feats = qformer_features(prepared.images(ids), encoder, image_processor, batch_size=16)
    assert feats.shape == (len(ids), N_QUERY, QFORMER) and feats.dtype == np.float32
    del encoder
    # stage 1: 24,576 targets from the micro world's voxels (images without features excluded)
    keep = set(ids.tolist())
    result = fit_stage1(prepared, feats, ids, alphas=[1e2, 1e4], cv=2, device="cpu",
                        exclude_ids=[i for i in train_ids if i not in keep])
    dec = result.decoder
    assert dec.weight.shape == (N_QUERY * QFORMER, prepared.n_voxels)
    assert dec.weight.dtype == torch.float32
    assert result.test_pred.shape == (len(test_ids), N_QUERY, QFORMER)
    # a stage-2 training step (low-rank update of the frozen map) at the real ITM widths
    itm, itm_processor = load_itm(_itm(tmp_path / "itm"), device="cpu")
    model = BrainTextContrastive(dec, itm, brain_update="low_rank", rank=4)
    X, _ = prepared.averaged_betas("train")
    rows = np.searchsorted(prepared.image_ids("train"), ids[:32])
    caps = dict(zip(ids[:32].tolist(), prepared.captions(ids[:32])))
    parts = [PairData.build(X[rows[sl]], feats[:32][sl], ids[:32][sl], caps)
             for sl in (slice(0, 24), slice(24, 32))]
    for part in parts:
        part.text_feats = encode_texts(model, itm_processor.tokenizer, part.captions, 16)
        assert part.text_feats.shape == (len(part.captions), ITM_DIM)
    config = TrainConfig(lr=1e-4, batch_size=8, grad_accum=1, epochs=1, warmup_steps=0,
                         eval_every=1000, checkpoint_every=1000, max_length=16)
    res = fit(model, Stage2Data(*parts, test_ids=test_ids), config, tmp_path / "stage2",
              progress=False)
    assert res.steps >= 1 and np.isfinite(res.history[-1]["loss"])
    assert model.delta_out.abs().sum() > 0  # the update moved
    pred = model.predict_tokens(torch.as_tensor(X[rows[:4]]))
    assert pred.shape == (4, N_QUERY, QFORMER) and pred.dtype == torch.float32
    sizes = model_sizes({"blip2_model": str(opt), "itm_model": str(tmp_path / "itm")})
    assert (sizes["n_query"], sizes["hidden"], sizes["text_hidden"]) == (32, 768, 2560)
    # batched captions from the predicted tokens, float32 and bf16 (OPT and Flan-T5)
    tokens = result.test_pred[:3]
    for kind, path in (("opt", opt), ("t5", _captioner(tmp_path / "t5", "t5"))):
        for dtype in ("float32", "bfloat16"):
            cap_model, processor = load_captioner(path, device="cpu", dtype=dtype)
            assert cap_model.language_projection.weight.dtype == getattr(torch, dtype)
            width = OPT_HIDDEN if kind == "opt" else T5_D_MODEL
            assert cap_model.language_projection.out_features == width
            vocab = OPT_VOCAB if kind == "opt" else T5_VOCAB
            assert cap_model.get_output_embeddings().weight.shape[0] == vocab
            captions = generate_captions(tokens, cap_model, processor, batch_size=2,
                                         max_new_tokens=3, progress=False)
            assert len(captions) == 3 and all(isinstance(c, str) for c in captions)
            del cap_model
