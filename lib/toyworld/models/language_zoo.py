"""The toy language zoo: a causal language model (OPT) at several sizes, trained on captions.

Each model is an :class:`~transformers.OPTForCausalLM` trained by next-word prediction on
the toy captions with the word-level tokenizer, saved beside that tokenizer, so
``AutoModelForCausalLM.from_pretrained(path)`` and ``AutoTokenizer.from_pretrained(path)``
load it by path. An untrained copy (same configuration, random weights) is the baseline.
"""

from __future__ import annotations

import numpy as np

from ._train import pad_sequences, seeded_init, train_epochs


def build_language_model(tokenizer, size: dict, seed: int, stream: int):
    """A freshly initialised ``OPTForCausalLM`` of the given size (``hidden``, ``layers``)."""
    from transformers import OPTConfig, OPTForCausalLM

    h = size["hidden"]
    config = OPTConfig(
        vocab_size=len(tokenizer), hidden_size=h, num_hidden_layers=size["layers"],
        ffn_dim=4 * h, num_attention_heads=max(h // 24, 1), max_position_embeddings=64,
        word_embed_proj_dim=h, dropout=0.0, attention_dropout=0.0,
        pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, tie_word_embeddings=True,
    )
    return seeded_init(OPTForCausalLM, config, seed, stream)


def caption_ids(tokenizer, texts: list[str]):
    """``<s> words </s>`` ids, right-padded.

    Returns
    -------
    ids, mask : LongTensor of shape (n_texts, max_len)
    """
    enc = tokenizer(list(texts))["input_ids"]
    return pad_sequences([e + [tokenizer.eos_token_id] for e in enc], tokenizer.pad_token_id)


def _loss(model, ids, mask):
    keep = int(mask.sum(1).max())
    ids, mask = ids[:, :keep], mask[:, :keep]
    labels = ids.masked_fill(mask == 0, -100)
    return model(input_ids=ids, attention_mask=mask, labels=labels).loss


def train_language_model(model, ids, mask, spec: dict, seed: int, stream: int, desc: str):
    """Next-word training on caption ids (``epochs``, ``batch``, ``lr`` in ``spec``)."""
    rng = np.random.default_rng([int(seed), 4000 + int(stream)])
    model.train()
    history = train_epochs(lambda idx: _loss(model, ids[idx], mask[idx]), model.parameters(),
                           len(ids), spec["batch"], spec["epochs"], spec["lr"], rng, desc)
    model.eval()
    return history


def evaluate_language_model(model, ids, mask) -> dict:
    """Held-out next-word cross-entropy (nats per token) and perplexity."""
    import torch

    with torch.inference_mode():
        losses, counts = [], []
        for i in range(0, len(ids), 256):
            m = mask[i : i + 256]
            losses.append(float(_loss(model, ids[i : i + 256], m)))
            counts.append(int(m[:, 1:].sum()))
    ce = float(np.average(losses, weights=counts))
    return {"val_loss": ce, "val_perplexity": float(np.exp(ce))}
