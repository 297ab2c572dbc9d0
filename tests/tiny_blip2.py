"""Tiny random-weight BLIP-2 checkpoints of the real architecture, for the tests.

They use the same classes and file layout as ``Salesforce/blip2-opt-2.7b`` (OPT language model)
and ``Salesforce/blip2-flan-t5-xl`` (encoder-decoder T5 language model), with a small
word-level tokenizer, and are saved with ``save_pretrained`` so that every loader in ``lib``
reads them by path exactly as it reads the real checkpoints. :func:`caption_images` captions
pixels with transformers' own ``generate``: the reference that ``lib.decoding`` must match.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

_WORDS = [
    "a", "an", "the", "of", "on", "in", "with", "and", "is", "are", "photo", "picture",
    "image", "red", "green", "blue", "yellow", "circle", "square", "triangle", "star",
    "face", "person", "word", "sky", "grass", "water", "room", "big", "small", "two", "one",
]


def _tokenizer(kind: str):
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    specials = ["<pad>", "</s>", "<unk>", "<s>", "<image>"]
    vocab = {tok: i for i, tok in enumerate(specials + _WORDS)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    if kind == "opt":  # OPT prepends its BOS (</s>) to every text
        tok.post_processor = processors.TemplateProcessing(
            single="</s> $A", special_tokens=[("</s>", vocab["</s>"])]
        )
    else:  # T5 appends EOS
        tok.post_processor = processors.TemplateProcessing(
            single="$A </s>", special_tokens=[("</s>", vocab["</s>"])]
        )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="<pad>",
        eos_token="</s>",
        bos_token="</s>" if kind == "opt" else None,
        unk_token="<unk>",
        extra_special_tokens={"image_token": "<image>"},
    )
    return fast, vocab


def make_tiny_blip2(
    path: str | os.PathLike,
    kind: str = "opt",
    seed: int = 0,
    num_query_tokens: int = 4,
    hidden: int = 32,
    image_size: int = 32,
) -> Path:
    """Write a tiny random-weight :class:`~transformers.Blip2ForConditionalGeneration`.

    Parameters
    ----------
    path : path-like
        Output folder (model + :class:`~transformers.Blip2Processor`).
    kind : {"opt", "t5"}
        Decoder-only OPT language model or encoder-decoder T5 (as in the Flan-T5 BLIP-2s).
    seed : int
        Seed of the random weights.
    num_query_tokens, hidden, image_size : int
        Number of query tokens, width of every sub-model, image side in pixels.

    Returns
    -------
    path : Path
    """
    import torch
    from transformers import (
        Blip2Config,
        Blip2ForConditionalGeneration,
        Blip2Processor,
        Blip2QFormerConfig,
        Blip2VisionConfig,
        BlipImageProcessor,
        OPTConfig,
        T5Config,
    )

    if kind not in ("opt", "t5"):
        raise ValueError(f"kind must be 'opt' or 't5', got {kind!r}")
    tokenizer, vocab = _tokenizer(kind)
    vision = Blip2VisionConfig(
        hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=2,
        num_attention_heads=4, image_size=image_size, patch_size=8,
    )
    qformer = Blip2QFormerConfig(
        hidden_size=hidden, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=2 * hidden, encoder_hidden_size=hidden, vocab_size=len(vocab),
    )
    if kind == "opt":
        text = OPTConfig(
            vocab_size=len(vocab), hidden_size=hidden, num_hidden_layers=2, ffn_dim=2 * hidden,
            num_attention_heads=4, max_position_embeddings=128, word_embed_proj_dim=hidden,
            bos_token_id=vocab["</s>"], eos_token_id=vocab["</s>"], pad_token_id=vocab["<pad>"],
        )
    else:
        text = T5Config(
            vocab_size=len(vocab), d_model=hidden, d_kv=8, d_ff=2 * hidden, num_layers=2,
            num_heads=4, decoder_start_token_id=vocab["<pad>"], eos_token_id=vocab["</s>"],
            pad_token_id=vocab["<pad>"],
        )
    config = Blip2Config(
        vision_config=vision.to_dict(), qformer_config=qformer.to_dict(),
        text_config=text.to_dict(), num_query_tokens=num_query_tokens,
        image_token_index=vocab["<image>"],
    )
    torch.manual_seed(seed)
    model = Blip2ForConditionalGeneration(config)
    with torch.no_grad():  # random weights large enough that captions vary between inputs
        for name, p in model.named_parameters():
            if p.ndim >= 2:
                p.normal_(0.0, 0.5 if "language_model" in name else 0.2)
    image_processor = BlipImageProcessor(
        size={"height": image_size, "width": image_size},
        image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5],
    )
    processor = Blip2Processor(
        image_processor=image_processor, tokenizer=tokenizer, num_query_tokens=num_query_tokens
    )
    path = Path(path)
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return path


def caption_images(
    images: np.ndarray | Sequence,
    model,
    processor,
    prompt: str | None = None,
    batch_size: int = 16,
    num_beams: int = 1,
    max_new_tokens: int = 30,
) -> list[str]:
    """BLIP-2 captioning the images themselves with transformers' own ``generate``.

    The reference path that :func:`lib.decoding.generate_captions` must reproduce when it is
    given the images' true Q-Former outputs (tests only: the product captions query tokens).

    Parameters
    ----------
    images : ndarray of shape (n_images, H, W, 3), uint8
    model, processor, prompt, batch_size, num_beams, max_new_tokens
        As in :func:`lib.decoding.generate_captions`.

    Returns
    -------
    captions : list of str
    """
    import torch

    from lib.decoding.generate import _strip_prompt, prompt_ids

    device = model.language_projection.weight.device
    ids = prompt_ids(model, processor, prompt)
    captions: list[str] = []
    for start in range(0, len(images), batch_size):
        batch = [np.asarray(im) for im in images[start : start + batch_size]]
        pixels = processor.image_processor(images=batch, return_tensors="pt")["pixel_values"]
        input_ids = torch.tensor([ids] * len(batch), device=device)
        with torch.inference_mode():
            out = model.generate(
                pixel_values=pixels.to(device, model.vision_model.dtype),
                input_ids=input_ids,
                attention_mask=torch.ones_like(input_ids),
                num_beams=num_beams,
                do_sample=False,
                max_new_tokens=max_new_tokens,
            )
        out = _strip_prompt(out, input_ids, model.config.use_decoder_only_language_model)
        text = processor.tokenizer.batch_decode(out, skip_special_tokens=True)
        captions.extend(s.strip() for s in text)
    return captions
