"""BLIP-2 Q-Former features: the query-token outputs that stage-1 decoding predicts from fMRI.

For an image, BLIP-2's vision encoder produces patch embeddings; the Q-Former's learned query
tokens cross-attend to them, and the Q-Former's last hidden state at the query positions,
of shape ``(n_query, hidden)`` (32 x 768 on ``Salesforce/blip2-opt-2.7b``), is what the
language projection hands to the language model. That tensor is the decoding target.

Only the vision encoder, the query tokens and the Q-Former are loaded: their weights are read
tensor by tensor from the checkpoint's safetensors files, so the language model (OPT-2.7B on the
real checkpoint, ~5 GB in bf16) never enters memory when only features are needed. When a
checkpoint's files cannot be read that way (e.g. an older ``.bin``-only checkpoint), the full
:class:`~transformers.Blip2ForConditionalGeneration` is loaded and the three parts are taken from
it (same weights, same results, more memory).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

#: Name of the feature dataset in the cache file written by :func:`extract_qformer_features`.
FEATURE_NAME = "qformer"

_PREFIXES = ("vision_model.", "qformer.", "query_tokens")


def query_outputs(model, image_embeds):
    """The Q-Former's last hidden state at the query tokens, from vision-encoder states.

    The one image -> query-token path of the project: feature extraction, the toy BLIP-2's
    training and the ITC image-caption score all call it (gradients flow when the caller
    does not disable them).

    Parameters
    ----------
    model : torch.nn.Module
        Anything with BLIP-2's ``query_tokens`` (1, n_query, hidden) and ``qformer``
        (:class:`transformers.Blip2ForConditionalGeneration`,
        :class:`transformers.Blip2ForImageTextRetrieval`, or the encoder of
        :func:`load_qformer_encoder`).
    image_embeds : Tensor of shape (n_images, n_patches + 1, vision_hidden)
        Last hidden state of the vision encoder.

    Returns
    -------
    query_output : Tensor of shape (n_images, n_query, hidden)
        In the Q-Former's dtype.
    """
    import torch

    mask = torch.ones(image_embeds.shape[:-1], dtype=torch.long, device=image_embeds.device)
    query = model.query_tokens.expand(image_embeds.shape[0], -1, -1)
    out = model.qformer(query_embeds=query, encoder_hidden_states=image_embeds,
                        encoder_attention_mask=mask, return_dict=True)
    return out.last_hidden_state


def image_query_outputs(model, pixel_values):
    """Pixels -> vision encoder -> Q-Former query outputs (:func:`query_outputs`).

    Parameters
    ----------
    model : torch.nn.Module
        As in :func:`query_outputs`, with a ``vision_model`` too.
    pixel_values : Tensor of shape (n_images, 3, H, W)
        From the checkpoint's image processor.

    Returns
    -------
    query_output : Tensor of shape (n_images, n_query, hidden)
    """
    image_embeds = model.vision_model(pixel_values, return_dict=True).last_hidden_state
    return query_outputs(model, image_embeds)


def _torch_module():
    import torch
    from torch import nn
    from transformers.models.blip_2.modeling_blip_2 import Blip2QFormerModel, Blip2VisionModel

    class QFormerEncoder(nn.Module):
        """Vision encoder + Q-Former of a BLIP-2 checkpoint: pixels -> query-token outputs.

        Parameters
        ----------
        config : transformers.Blip2Config
            The checkpoint's configuration.
        """

        def __init__(self, config):
            super().__init__()
            self.config = config
            self.vision_model = Blip2VisionModel._from_config(config.vision_config)
            self.query_tokens = nn.Parameter(
                torch.zeros(1, config.num_query_tokens, config.qformer_config.hidden_size)
            )
            self.qformer = Blip2QFormerModel._from_config(config.qformer_config)

        def forward(self, pixel_values):
            """Return the Q-Former's last hidden state at the query tokens.

            Parameters
            ----------
            pixel_values : Tensor of shape (n_images, 3, H, W)

            Returns
            -------
            query_output : Tensor of shape (n_images, n_query, hidden), float32
            """
            return image_query_outputs(self, pixel_values).float()

    return QFormerEncoder


def _weight_files(model: str) -> list[str] | None:
    """Local paths of the checkpoint's safetensors files, or None when there are none."""
    from transformers.utils import cached_file

    kwargs = {
        "_raise_exceptions_for_missing_entries": False,
        "_raise_exceptions_for_connection_errors": False,
    }
    index = cached_file(model, "model.safetensors.index.json", **kwargs)
    if index is not None:
        weight_map = json.loads(Path(index).read_text())["weight_map"]
        shards = sorted({f for k, f in weight_map.items() if k.startswith(_PREFIXES)})
        paths = [cached_file(model, s, **kwargs) for s in shards]
        return None if any(p is None for p in paths) else [str(p) for p in paths]
    single = cached_file(model, "model.safetensors", **kwargs)
    return None if single is None else [str(single)]


def load_qformer_encoder(model: str | os.PathLike, device: str = "auto"):
    """Load a BLIP-2 checkpoint's vision encoder + Q-Former and its image processor.

    Parameters
    ----------
    model : str or path-like
        Hugging Face Hub id (e.g. ``"Salesforce/blip2-opt-2.7b"``) or local folder of a
        :class:`~transformers.Blip2ForConditionalGeneration` saved with ``save_pretrained``.
    device : str
        ``"auto"``, ``"cpu"`` or ``"cuda[:N]"`` (see :func:`lib.config.resolve_device`).

    Returns
    -------
    encoder : torch.nn.Module
        In eval mode on ``device``; ``encoder(pixel_values)`` returns
        ``(n_images, n_query, hidden)`` float32. Weights stay in float32; on CUDA
        :func:`qformer_features` runs it under bf16 autocast.
    image_processor : transformers image processor
        The checkpoint's own preprocessing (resize, rescale, normalise).
    """
    import torch
    from safetensors import safe_open
    from transformers import AutoImageProcessor, Blip2Config

    from lib.config import resolve_device

    model = str(model)
    dev = resolve_device(device)
    try:
        config = Blip2Config.from_pretrained(model)
        image_processor = AutoImageProcessor.from_pretrained(model)
    except OSError as err:
        raise FileNotFoundError(
            f"blip2_model={model!r} could not be loaded: expected a local folder written by "
            "save_pretrained or a Hugging Face Hub id available offline (cached). "
            "Check the path in the parameter file or download the checkpoint first."
        ) from err

    encoder = _torch_module()(config)
    files = _weight_files(model)
    if files is not None:
        state = {}
        for path in files:
            with safe_open(path, framework="pt") as f:
                for key in f.keys():  # noqa: SIM118 - safe_open is not a dict
                    if key.startswith(_PREFIXES):
                        state[key] = f.get_tensor(key)
        missing, unexpected = encoder.load_state_dict(state, strict=False)
        if missing or unexpected:
            files = None  # key layout differs: fall back to the full model
    if files is None:
        from transformers import Blip2ForConditionalGeneration

        full = Blip2ForConditionalGeneration.from_pretrained(model, dtype=torch.float32)
        encoder.vision_model = full.vision_model
        encoder.qformer = full.qformer
        encoder.query_tokens = full.query_tokens
        del full
    return encoder.float().eval().to(dev), image_processor


def qformer_features(
    images: np.ndarray,
    encoder,
    image_processor,
    batch_size: int = 32,
) -> np.ndarray:
    """Q-Former query-token outputs for a stack of images.

    Parameters
    ----------
    images : ndarray of shape (n_images, H, W, 3), uint8
    encoder : torch.nn.Module
        From :func:`load_qformer_encoder`.
    image_processor : transformers image processor
        From :func:`load_qformer_encoder`.
    batch_size : int
        Images per forward pass.

    Returns
    -------
    features : ndarray of shape (n_images, n_query, hidden), float32
    """
    import torch

    device = next(encoder.parameters()).device
    out = []
    for start in range(0, len(images), batch_size):
        batch = [np.asarray(im) for im in images[start : start + batch_size]]
        pixels = image_processor(images=batch, return_tensors="pt")["pixel_values"].to(device)
        with torch.inference_mode(), torch.autocast(
            device_type=device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"
        ):
            out.append(encoder(pixels).float().cpu().numpy())
    n_query = encoder.query_tokens.shape[1]
    hidden = encoder.query_tokens.shape[2]
    return np.concatenate(out) if out else np.zeros((0, n_query, hidden), np.float32)


def extract_qformer_features(
    subject,
    model: str | os.PathLike,
    cache_path: str | os.PathLike,
    nsd_ids: Sequence[int] | None = None,
    batch_size: int = 32,
    device: str = "auto",
) -> tuple[np.ndarray, np.ndarray]:
    """Q-Former features of a subject's images, cached and resumable.

    Parameters
    ----------
    subject : lib.nsd.PreparedSubject
        Images are read lazily through ``subject.images(ids)``, one batch at a time.
    model : str or path-like
        BLIP-2 checkpoint (Hub id or local folder).
    cache_path : path-like
        HDF5 cache (:func:`lib.features.cache.extract_cached`); a killed run resumes from the
        last finished batch. One cache file per checkpoint: a different ``model`` must use a
        different path.
    nsd_ids : sequence of int or None
        Images to encode; default: all the subject's train and test images.
    batch_size : int
        Images per batch (and per cache flush).
    device : str
        ``"auto"``, ``"cpu"`` or ``"cuda[:N]"``.

    Returns
    -------
    features : ndarray of shape (n_images, n_query, hidden), float32
    nsd_ids : ndarray of shape (n_images,), int64
    """
    from lib.features.cache import extract_cached

    if nsd_ids is None:
        nsd_ids = np.union1d(subject.image_ids("train"), subject.image_ids("test"))
    nsd_ids = np.asarray(nsd_ids, dtype=np.int64)
    state: dict = {}

    def compute(keys: list[int]) -> dict[str, np.ndarray]:
        if not state:  # load the model only when something is missing from the cache
            state["encoder"], state["processor"] = load_qformer_encoder(model, device=device)
        images = subject.images(np.asarray(keys))
        feats = qformer_features(images, state["encoder"], state["processor"], batch_size)
        return {FEATURE_NAME: feats}

    out = extract_cached(
        cache_path, [int(k) for k in nsd_ids], compute, batch_size=batch_size, desc="Q-Former"
    )
    return out[FEATURE_NAME].astype(np.float32, copy=False), nsd_ids
