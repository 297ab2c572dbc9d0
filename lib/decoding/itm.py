"""BLIP-2's image-text matching (ITM) space: the checkpoint, its text side, ITC, retrieval.

- :func:`load_itm`: a :class:`~transformers.Blip2ForImageTextRetrieval` and its processor;
- :func:`tokenize_captions`, :func:`encode_texts`: captions -> normalised ITM embeddings
  (word embeddings -> Q-Former without queries -> CLS -> ``text_projection``, exactly what
  :class:`transformers.Blip2ForImageTextRetrieval` does with
  ``use_image_text_matching_head=False``);
- :func:`itc_similarity`, :func:`soft_targets`, :func:`contrastive_loss`: BLIP-2's image-text
  contrastive (ITC) similarity, max over query tokens of the cosine, and the symmetric loss with
  soft targets that stage 2 (:mod:`lib.decoding.contrastive`) trains with;
- :func:`pick_captions`, :func:`brain_text_retrieval`: brain <-> text k-way retrieval in the ITM
  space.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

# ----------------------------------------------------------------------------- the checkpoint


def load_itm(model: str | os.PathLike, device: str = "cpu"):
    """Load a :class:`~transformers.Blip2ForImageTextRetrieval` and its processor (float32).

    Parameters
    ----------
    model : str or path-like
        Hub id (e.g. ``"Salesforce/blip2-itm-vit-g"``) or a local ``save_pretrained`` folder.
    device : str

    Returns
    -------
    model : transformers.Blip2ForImageTextRetrieval (eval mode)
    processor : transformers.Blip2Processor
    """
    from transformers import AutoProcessor, Blip2ForImageTextRetrieval

    from lib.config import resolve_device

    try:
        processor = AutoProcessor.from_pretrained(str(model))
        net = Blip2ForImageTextRetrieval.from_pretrained(str(model), dtype=torch.float32)
    except OSError as err:
        raise FileNotFoundError(
            f"itm_model={str(model)!r} could not be loaded: expected a local folder written by "
            "save_pretrained or a Hugging Face Hub id available offline (cached). Check the "
            "path in the parameter file or download the checkpoint first."
        ) from err
    return net.eval().to(resolve_device(device)), processor


def tokenize_captions(tokenizer, captions: Sequence[str], max_length: int = 64):
    """Tokenise captions for the Q-Former text path (padding to ``max_length``, truncation).

    Returns
    -------
    input_ids, attention_mask : LongTensor of shape (n, max_length)
    """
    enc = tokenizer(
        list(captions), padding="max_length", max_length=max_length, truncation=True,
        return_tensors="pt",
    )
    return enc["input_ids"], enc["attention_mask"]


@torch.no_grad()
def encode_texts(
    model: nn.Module,
    tokenizer,
    captions: Sequence[str],
    max_length: int = 64,
    batch_size: int = 256,
) -> torch.Tensor:
    """Normalised ITM caption embeddings, batched.

    Parameters
    ----------
    model : BrainTextContrastive or transformers.Blip2ForImageTextRetrieval
        Anything with ``embeddings``, ``qformer`` and ``text_projection``.
    tokenizer : the ITM processor's tokenizer
    captions : sequence of str, length n

    Returns
    -------
    feats : Tensor of shape (n, dim), float32, on CPU
    """
    device = model.text_projection.weight.device
    out = []
    for start in range(0, len(captions), batch_size):
        ids, mask = tokenize_captions(tokenizer, captions[start : start + batch_size], max_length)
        ids, mask = ids.to(device), mask.to(device)
        embeds = model.embeddings(input_ids=ids)
        h = model.qformer(query_embeds=embeds, query_length=0, attention_mask=mask,
                          return_dict=True).last_hidden_state[:, 0, :]
        out.append(F.normalize(model.text_projection(h.float()), dim=-1).float().cpu())
    return torch.cat(out) if out else torch.zeros(0, model.text_projection.out_features)


# ----------------------------------------------------------------------------- ITC


def itc_similarity(query_feats: torch.Tensor, text_feats: torch.Tensor) -> torch.Tensor:
    """BLIP-2 image(brain)-text similarity: max over query tokens of the dot product.

    Parameters
    ----------
    query_feats : Tensor of shape (n_a, n_query, dim)
        L2-normalised query-token embeddings (brain or image side).
    text_feats : Tensor of shape (n_b, dim)
        L2-normalised caption embeddings.

    Returns
    -------
    sim : Tensor of shape (n_a, n_b)
        ``sim[i, j] = max_q <query_feats[i, q], text_feats[j]>`` (cosine when normalised).
    """
    if query_feats.ndim != 3 or text_feats.ndim != 2:
        raise ValueError(
            "itc_similarity expects query_feats (n, n_query, dim) and text_feats (m, dim); got "
            f"{tuple(query_feats.shape)} and {tuple(text_feats.shape)}"
        )
    return torch.einsum("aqd,bd->abq", query_feats, text_feats).amax(dim=-1)


def soft_targets(
    image_ids: torch.Tensor, label_smoothing: float = 0.1, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """Contrastive targets: uniform over the pairs that show the same image, then smoothed.

    Parameters
    ----------
    image_ids : Tensor of shape (n,)
        Image id of each (brain, caption) pair in the batch.
    label_smoothing : float
        Weight of the uniform distribution mixed in (0.1 in the original study).

    Returns
    -------
    targets : Tensor of shape (n, n), of ``dtype``
        Rows sum to 1: ``(1 - s) * same / same.sum(1) + s / n``.
    """
    ids = image_ids.reshape(-1, 1)
    same = (ids == ids.T).to(dtype)
    targets = same / same.sum(dim=1, keepdim=True)
    n = targets.shape[1]
    return (1.0 - label_smoothing) * targets + label_smoothing / n


def contrastive_loss(
    query_feats: torch.Tensor,
    text_feats: torch.Tensor,
    image_ids: torch.Tensor,
    temperature: torch.Tensor | float,
    label_smoothing: float = 0.1,
) -> torch.Tensor:
    """Symmetric ITC loss with soft targets over same-image pairs.

    Parameters
    ----------
    query_feats : Tensor of shape (n, n_query, dim)
        Normalised query-token embeddings of the n pairs' brain samples (or images).
    text_feats : Tensor of shape (n, dim)
        Normalised embeddings of the n pairs' captions.
    image_ids : Tensor of shape (n,)
        Image of each pair (pairs of the same image are all positives).
    temperature : float or scalar Tensor
    label_smoothing : float

    Returns
    -------
    loss : scalar Tensor
        ``(CE(query->text) + CE(text->query)) / 2`` with soft targets.
    """
    sim = itc_similarity(query_feats, text_feats) / temperature
    targets = soft_targets(image_ids, label_smoothing, dtype=sim.dtype)
    loss_q2t = -(F.log_softmax(sim, dim=1) * targets).sum(dim=1).mean()
    loss_t2q = -(F.log_softmax(sim.T, dim=1) * targets).sum(dim=1).mean()
    return (loss_q2t + loss_t2q) / 2


# ----------------------------------------------------------------------------- retrieval


def pick_captions(captions: Sequence[Sequence[str]], seed: int = 0) -> list[str]:
    """One caption per image, drawn at random (seeded) among its captions.

    Parameters
    ----------
    captions : sequence of sequence of str, length n_images
    seed : int

    Returns
    -------
    picked : list of str, length n_images
    """
    rng = np.random.default_rng(seed)
    out = []
    for i, caps in enumerate(captions):
        if not caps:
            raise ValueError(f"item {i} has no caption; text retrieval needs one per image")
        out.append(caps[int(rng.integers(len(caps)))])
    return out


@torch.no_grad()
def brain_text_retrieval(
    pred_tokens: np.ndarray,
    text_feats: torch.Tensor | np.ndarray,
    projection: nn.Module,
    k: int = 300,
    n_draws: int = 30,
    seed: int = 0,
    *,
    repeat_averaged: bool | None,
    tie: str = "strict",
) -> dict:
    """Brain<->text k-way top-1 in the ITM embedding space (BLIP-2 ITC similarity).

    Parameters
    ----------
    pred_tokens : ndarray of shape (n_images, n_query, hidden)
        Query tokens predicted from the brain (stage 1 or stage 2), one row per test image.
    text_feats : array of shape (n_images, dim)
        Normalised ITM embeddings of one caption per image (:func:`encode_texts`), row-aligned.
    projection : torch.nn.Linear
        Maps query tokens into the ITM space: the ITM ``vision_projection`` (the image head, the
        same for every stage) or a stage-2 ``brain_projection``.
    k, n_draws, seed, repeat_averaged, tie
        As in :func:`lib.metrics.retrieval_from_similarity` (k capped at n_images).

    Returns
    -------
    result : dict
        :func:`lib.metrics.retrieval_from_similarity`'s result with directions
        ``brain_to_text`` and ``text_to_brain``.
    """
    from lib.metrics import retrieval_from_similarity

    dev = projection.weight.device
    tokens = torch.as_tensor(np.asarray(pred_tokens, np.float32), device=dev)
    brain = F.normalize(projection(tokens).float(), dim=-1)
    text = torch.as_tensor(np.asarray(text_feats, np.float32), device=dev)
    sim = itc_similarity(brain, text).cpu().numpy()
    return retrieval_from_similarity(
        sim, k, n_draws, seed, repeat_averaged=repeat_averaged, tie=tie,
        directions=("brain_to_text", "text_to_brain"),
        similarity="max over query tokens of the cosine (BLIP-2 ITC)",
        centring="none (unit-normalised ITM embeddings)")
