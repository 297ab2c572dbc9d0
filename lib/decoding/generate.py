"""Captions from query tokens: BLIP-2's language projection, then the language model's ``generate``.

This is the tail of :meth:`transformers.Blip2ForConditionalGeneration.generate` (transformers
5.x) with the vision encoder and Q-Former replaced by query tokens predicted from the brain:
the prompt is ``n_query`` image-placeholder tokens (``config.image_token_index``) followed by
the text prompt (or the BOS token when there is none, as BLIP-2 does); the placeholders' input
embeddings are replaced by ``language_projection(query_tokens)``; and the language model's own
``generate`` runs on those ``inputs_embeds``. The library's ``generate`` cannot be called
directly because it always recomputes the query tokens from ``pixel_values``.

It works for decoder-only language models (OPT: ``input_ids`` are passed along so that the
output can be cut after the prompt) and encoder-decoder ones (Flan-T5: the embeddings are the
encoder input, as in BLIP-2's own code). Every item of a batch gets the same prompt, so all
sequences have the same length and no padding is needed: batched and one-at-a-time greedy
captions are identical (tested).
"""

from __future__ import annotations

import os

import numpy as np
from tqdm.auto import tqdm

from lib.config import show_progress


def load_captioner(model: str | os.PathLike, device: str = "auto", dtype: str | None = None):
    """Load a :class:`~transformers.Blip2ForConditionalGeneration` and its processor.

    Parameters
    ----------
    model : str or path-like
        Hugging Face Hub id (e.g. ``"Salesforce/blip2-opt-2.7b"``) or a local folder.
    device : str
        ``"auto"``, ``"cpu"`` or ``"cuda[:N]"``.
    dtype : str or None
        ``"float32"``, ``"bfloat16"`` or ``"float16"``; default bfloat16 on CUDA (the 2.7B
        model then needs ~8 GB), float32 on CPU. The Q-Former stays float32 as BLIP-2 asks.

    Returns
    -------
    model : transformers.Blip2ForConditionalGeneration
        In eval mode on the device.
    processor : transformers.Blip2Processor
    """
    import torch
    from transformers import Blip2ForConditionalGeneration, Blip2Processor

    from lib.config import resolve_device

    dev = resolve_device(device)
    if dtype is None:
        dtype = "bfloat16" if dev.type == "cuda" else "float32"
    try:
        processor = Blip2Processor.from_pretrained(str(model))
        net = Blip2ForConditionalGeneration.from_pretrained(str(model), dtype=getattr(torch, dtype))
    except OSError as err:
        raise FileNotFoundError(
            f"blip2_model={str(model)!r} could not be loaded: expected a local folder written by "
            "save_pretrained or a Hugging Face Hub id available offline (cached). "
            "Check the path in the parameter file or download the checkpoint first."
        ) from err
    if net.config.image_token_index is None:
        raise ValueError(
            f"blip2_model={str(model)!r} has no image_token_index in its config; transformers 5 "
            "needs it to place the query tokens. Re-save the checkpoint with a recent transformers."
        )
    return net.eval().to(dev), processor


def prompt_ids(model, processor, prompt: str | None = None) -> list[int]:
    """Token ids of the language-model input: ``n_query`` image placeholders, then the prompt.

    Parameters
    ----------
    model : transformers.Blip2ForConditionalGeneration
    processor : transformers.Blip2Processor
    prompt : str or None
        Text prompt (e.g. ``"a photo of"``); None or ``""``: no prompt (decoder-only models
        then start from the BOS token, as BLIP-2's ``generate`` does).

    Returns
    -------
    ids : list of int
    """
    config = model.config
    image = [config.image_token_index] * config.num_query_tokens
    bos = getattr(config.text_config, "bos_token_id", None)
    if not prompt and config.use_decoder_only_language_model and bos is not None:
        return image + [bos]
    return image + list(processor.tokenizer(prompt or "")["input_ids"])


def _checked_query_tokens(query_tokens: np.ndarray, config) -> np.ndarray:
    """``query_tokens`` as float32, or a clear error when their shape is not the checkpoint's."""
    query_tokens = np.asarray(query_tokens, dtype=np.float32)
    expected = (config.num_query_tokens, config.qformer_config.hidden_size)
    if query_tokens.ndim != 3 or query_tokens.shape[1:] != expected:
        raise ValueError(
            f"query_tokens must have shape (n_items, {expected[0]}, {expected[1]}) for this "
            f"checkpoint, got {query_tokens.shape}; was the decoder trained on another BLIP-2?"
        )
    return query_tokens


def _language_inputs(model, ids, q):
    """Language-model inputs of a batch: the prompt's embeddings, placeholders replaced.

    Parameters
    ----------
    model : transformers.Blip2ForConditionalGeneration
    ids : LongTensor of shape (n_prompt,)
        :func:`prompt_ids`.
    q : Tensor of shape (n, n_query, hidden)
        Query tokens, on the language projection's device and dtype.

    Returns
    -------
    inputs : dict
        ``inputs_embeds`` (n, n_prompt, lm_hidden), ``attention_mask`` (n, n_prompt) and, for a
        decoder-only language model, ``input_ids``.
    input_ids : LongTensor of shape (n, n_prompt)
    """
    import torch

    input_ids = ids.unsqueeze(0).repeat(q.shape[0], 1)
    inputs_embeds = model.get_input_embeddings()(input_ids)
    lm_inputs = model.language_projection(q).to(inputs_embeds.dtype)
    placeholder = (input_ids == model.config.image_token_index).unsqueeze(-1)
    inputs_embeds = inputs_embeds.masked_scatter(placeholder, lm_inputs)
    inputs = {"inputs_embeds": inputs_embeds, "attention_mask": torch.ones_like(input_ids)}
    if model.config.use_decoder_only_language_model:
        inputs["input_ids"] = input_ids
    return inputs, input_ids


def _strip_prompt(out, input_ids, decoder_only: bool):
    """Generated ids without the prompt a decoder-only language model echoes back."""
    import torch

    n = input_ids.shape[1]
    if decoder_only and out.shape[1] >= n and torch.equal(out[:, :n], input_ids):
        return out[:, n:]
    return out


def generate_captions(
    query_tokens: np.ndarray,
    model,
    processor,
    prompt: str | None = None,
    batch_size: int = 16,
    num_beams: int = 1,
    max_new_tokens: int = 30,
    progress: bool = True,
    **generate_kwargs,
) -> list[str]:
    """Captions written by the language model from (predicted) Q-Former query tokens.

    Parameters
    ----------
    query_tokens : ndarray of shape (n_items, n_query, hidden)
        Q-Former outputs, predicted from fMRI or computed from images.
    model : transformers.Blip2ForConditionalGeneration
    processor : transformers.Blip2Processor
    prompt : str or None
        Optional text prompt given after the query tokens (not part of the returned caption).
    batch_size : int
        Items per ``generate`` call.
    num_beams : int
        1 = greedy decoding; > 1 = beam search.
    max_new_tokens : int
        Longest caption, in tokens.
    progress : bool
        Show a progress bar.
    **generate_kwargs
        Passed to the language model's ``generate`` (e.g. ``length_penalty``); ``do_sample``
        (sample each next token instead of taking the most likely; seed torch first) is False
        unless given.

    Returns
    -------
    captions : list of str, length n_items
    """
    import torch

    query_tokens = _checked_query_tokens(query_tokens, model.config)
    proj = model.language_projection
    device, dtype = proj.weight.device, proj.weight.dtype
    ids = torch.tensor(prompt_ids(model, processor, prompt), dtype=torch.long, device=device)
    tokenizer = processor.tokenizer
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    generate_kwargs.setdefault("do_sample", False)

    captions: list[str] = []
    starts = range(0, len(query_tokens), batch_size)
    for start in tqdm(starts, desc="captions", disable=not show_progress(progress)):
        q = torch.from_numpy(query_tokens[start : start + batch_size]).to(device, dtype)
        with torch.inference_mode():
            inputs, input_ids = _language_inputs(model, ids, q)
            out = model.language_model.generate(**inputs, num_beams=num_beams,
                                                max_new_tokens=max_new_tokens, pad_token_id=pad,
                                                **generate_kwargs)
        out = _strip_prompt(out, input_ids, model.config.use_decoder_only_language_model)
        captions.extend(s.strip() for s in tokenizer.batch_decode(out, skip_special_tokens=True))
    return captions
