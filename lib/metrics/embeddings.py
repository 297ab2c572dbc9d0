"""Embedding similarity between decoded and reference captions (sentence encoder, CLIP text).

Models are loaded with ``local_files_only=True`` (a local folder or the Hugging Face cache),
so nothing is downloaded and nothing hangs offline; a model that cannot be loaded gives
``{"skipped": "model not available: <id>"}`` instead of an error.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

#: Default sentence encoder (mean pooling, as sentence-transformers does for it).
SENTENCE_MODEL = "sentence-transformers/all-MiniLM-L6-v2"
#: Default CLIP model (its text tower).
CLIP_MODEL = "openai/clip-vit-base-patch32"


#: Models loaded in this process: chapter 05 scores every run and condition with the same two.
_LOADED: dict = {}


def _load(model: str):
    """(config, tokenizer, model) from a local path or the HF cache (loaded once per process),
    or None (not remembered: a model downloaded meanwhile is found on the next call)."""
    if model not in _LOADED:
        loaded = _load_uncached(model)
        if loaded is None:
            return None
        _LOADED[model] = loaded
    return _LOADED[model]


def _load_uncached(model: str):
    from transformers import AutoConfig, AutoModel, AutoTokenizer

    try:
        config = AutoConfig.from_pretrained(model, local_files_only=True)
        tokenizer = AutoTokenizer.from_pretrained(model, local_files_only=True)
        if config.model_type == "clip":
            from transformers import CLIPModel

            net = CLIPModel.from_pretrained(model, local_files_only=True)
        elif config.model_type == "clip_text_model":
            from transformers import CLIPTextModelWithProjection

            net = CLIPTextModelWithProjection.from_pretrained(model, local_files_only=True)
        else:
            net = AutoModel.from_pretrained(model, local_files_only=True)
    except (OSError, ValueError, KeyError, ImportError):
        return None
    return config, tokenizer, net.eval()


def _embed(texts: list[str], tokenizer, net, kind: str, batch_size: int, device) -> np.ndarray:
    import torch

    out = []
    max_len = getattr(tokenizer, "model_max_length", 512)
    max_len = 512 if not max_len or max_len > 100_000 else max_len
    if kind == "clip":
        max_len = min(
            max_len,
            net.config.text_config.max_position_embeddings
            if hasattr(net.config, "text_config")
            else net.config.max_position_embeddings,
        )
    with torch.inference_mode():
        for start in range(0, len(texts), batch_size):
            batch = texts[start : start + batch_size]
            enc = tokenizer(
                batch, padding=True, truncation=True, max_length=max_len, return_tensors="pt"
            )
            enc = {
                k: v.to(device)
                for k, v in enc.items()
                if k in ("input_ids", "attention_mask", "token_type_ids")
            }
            if kind == "clip":
                enc.pop("token_type_ids", None)
                if hasattr(net, "get_text_features"):
                    feats = net.get_text_features(**enc)
                else:
                    feats = net(**enc).text_embeds
                if not isinstance(feats, torch.Tensor):
                    feats = feats.pooler_output
            else:
                hidden = net(**enc).last_hidden_state  # (b, t, h)
                mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                feats = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            feats = torch.nn.functional.normalize(feats.float(), dim=-1)
            out.append(feats.cpu().numpy())
    return np.concatenate(out, axis=0)


def embedding_similarity(
    hyps: Sequence[str],
    refs: Sequence[Sequence[str]],
    model: str = SENTENCE_MODEL,
    batch_size: int = 64,
    device: str = "cpu",
) -> dict:
    """Cosine similarity of caption embeddings, hypothesis vs its references.

    CLIP checkpoints (``model_type`` "clip" or "clip_text_model") are embedded with the
    projected text tower (``get_text_features``); any other model with mean pooling of the
    last hidden state over tokens (sentence-transformers style). Embeddings are L2-normalized.
    Each item's score is the mean cosine between the hypothesis and each of its (deduplicated)
    references.

    Parameters
    ----------
    hyps : sequence of str, length n
        Decoded captions.
    refs : sequence of sequences of str, length n
        Reference captions of each item.
    model : str
        Local folder or Hub id already in the local cache.
    batch_size : int
        Captions per forward pass.
    device : str
        Torch device.

    Returns
    -------
    result : dict
        ``{"model", "kind" ("sentence" | "clip"), "mean", "per_item" (ndarray (n,))}``, or
        ``{"skipped": "model not available: <model>"}`` when the model cannot be loaded.
    """
    from .captions import _validate

    if isinstance(hyps, str):
        raise TypeError("hyps must be a list of captions, got a single str.")
    hyps_list, refs_list = list(hyps), list(refs)
    hyps_clean, refs_clean = _validate(hyps_list, refs_list)
    loaded = _load(str(model))
    if loaded is None:
        return {"skipped": f"model not available: {model}"}
    config, tokenizer, net = loaded
    net = net.to(device)
    kind = "clip" if config.model_type in ("clip", "clip_text_model") else "sentence"
    flat = [r for ref in refs_clean for r in ref]
    h = _embed(hyps_clean, tokenizer, net, kind, batch_size, device)
    r = _embed(flat, tokenizer, net, kind, batch_size, device)
    owner = np.repeat(np.arange(len(refs_clean)), [len(x) for x in refs_clean])
    cos = np.einsum("ij,ij->i", h[owner], r)
    per_item = np.bincount(owner, weights=cos) / np.bincount(owner)
    return {"model": str(model), "kind": kind, "mean": float(per_item.mean()), "per_item": per_item}


def embedding_metrics(
    hyps: Sequence[str],
    refs: Sequence[Sequence[str]],
    sentence_model: str = SENTENCE_MODEL,
    clip_model: str = CLIP_MODEL,
    **kwargs,
) -> dict:
    """Both embedding similarities: ``{"SentenceSim": ..., "CLIP-T": ...}``.

    Each value is the dict returned by :func:`embedding_similarity` (or its ``skipped`` form).
    """
    return {
        "SentenceSim": embedding_similarity(hyps, refs, model=sentence_model, **kwargs),
        "CLIP-T": embedding_similarity(hyps, refs, model=clip_model, **kwargs),
    }
