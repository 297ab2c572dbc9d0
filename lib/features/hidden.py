"""Per-layer features of vision models and causal language models, cached to HDF5.

Vision models (any ``transformers`` ``AutoModel`` that returns ``hidden_states``):

- token models (ViT, DeiT, DINOv2, MAE, CLIP's vision tower, ...): each layer's tokens are
  averaged over the image patches (``pooling="mean"``, the prefix tokens such as CLS and
  registers excluded) or the first token is taken (``pooling="cls"``);
- convolutional models (ResNet, ConvNeXt, ConvNeXt V2, ...): each stage's feature map is
  global-average pooled over space.

Causal language models (``AutoModelForCausalLM``): each caption's hidden states are averaged
over its tokens (padding and special tokens excluded), then over the image's captions, as in
the original study.

Layer 0 is the embedding output (``hidden_states[0]``), layer ``i`` the output of block ``i``.
Models are loaded by :mod:`lib.features.loading`; layers are chosen and pooled by
:mod:`lib.features.pooling`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from lib.features.cache import extract_cached

# re-exported: lib.encoding.zoo uses _DUAL_ENCODERS and _check_local_or_hub, tests parse_pooling
from lib.features.loading import (  # noqa: F401
    _DUAL_ENCODERS,
    _check_local_or_hub,
    load_language_model,
    load_vision_model,
)
from lib.features.pooling import parse_pooling, pool_hidden_state, select_layers  # noqa: F401


def _layer_name(layer: int) -> str:
    return f"layer_{layer:03d}"


def _autocast(device):
    import contextlib

    import torch

    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def vision_hidden_states(model, processor, images: np.ndarray, pooling: str = "mean",
                         layers=None) -> dict[int, np.ndarray]:
    """Per-layer pooled features of one batch of images (no caching).

    Parameters
    ----------
    model, processor
        From :func:`load_vision_model`.
    images : ndarray of shape (n_images, height, width, 3), uint8
    pooling : {"mean", "cls", "grid<k>"}
        See :func:`pool_hidden_state`.
    layers : None, int or sequence of int
        See :func:`select_layers`.

    Returns
    -------
    features : dict of int to ndarray of shape (n_images, dim_layer), float32
    """
    import torch

    device = next(model.parameters()).device
    inputs = processor(images=list(np.asarray(images)), return_tensors="pt")
    pixels = inputs["pixel_values"].to(device)
    with torch.inference_mode(), _autocast(device):
        out = model(pixel_values=pixels, output_hidden_states=True)
    hidden = out.hidden_states
    keep = select_layers(len(hidden), layers)
    return {i: pool_hidden_state(hidden[i], model.config, pooling).float().cpu().numpy()
            for i in keep}


def language_hidden_states(model, tokenizer, texts: Sequence[str], layers=None,
                           max_length: int = 64,
                           exclude_special_tokens: bool = True) -> dict[int, np.ndarray]:
    """Per-layer token-averaged features of a batch of texts (no caching).

    Parameters
    ----------
    model, tokenizer
        From :func:`load_language_model`.
    texts : sequence of str
    layers : None, int or sequence of int
        See :func:`select_layers`.
    max_length : int
        Longer texts are truncated.
    exclude_special_tokens : bool
        Leave BOS/EOS-like tokens out of the average (their states are often outliers);
        a text made only of special tokens keeps them.

    Returns
    -------
    features : dict of int to ndarray of shape (n_texts, hidden_size), float32
    """
    import torch

    device = next(model.parameters()).device
    enc = tokenizer(list(texts), return_tensors="pt", padding=True, truncation=True,
                    max_length=max_length, return_special_tokens_mask=True)
    mask = enc["attention_mask"].bool()
    if exclude_special_tokens:
        content = mask & ~enc["special_tokens_mask"].bool()
        mask = torch.where(content.any(dim=1, keepdim=True), content, mask)
    weights = (mask.float() / mask.sum(dim=1, keepdim=True).clamp(min=1)).to(device)
    import inspect

    # only the hidden states are used: logits for one position, not texts x tokens x vocabulary
    # (250k words for BLOOM: gigabytes per batch)
    extra = ({"logits_to_keep": 1}
             if "logits_to_keep" in inspect.signature(model.forward).parameters else {})
    with torch.inference_mode(), _autocast(device):
        out = model(input_ids=enc["input_ids"].to(device),
                    attention_mask=enc["attention_mask"].to(device), output_hidden_states=True,
                    **extra)
    hidden = out.hidden_states
    keep = select_layers(len(hidden), layers)
    return {i: torch.einsum("bt,btd->bd", weights, hidden[i].float()).cpu().numpy()
            for i in keep}


# size: 9 independent options: the model (model_path, device), the rows (images, keys), the
# cache (cache_path, batch_size, desc) and what is kept (pooling, layers); callers use keywords
def vision_layer_features(model_path, images: Callable[[list[int]], np.ndarray],
                          keys: Sequence[int], cache_path, pooling: str = "mean", layers=None,
                          batch_size: int = 32, device: str = "auto",
                          desc: str = "") -> dict[int, np.ndarray]:
    """Per-layer features of a vision model for many images, cached and resumable.

    Parameters
    ----------
    model_path : str or path-like
        Hub id or local folder (see :func:`load_vision_model`).
    images : callable
        ``images(keys) -> ndarray (n, H, W, 3) uint8``, e.g. ``PreparedSubject.images``.
    keys : sequence of int
        Image ids (rows of the result, in this order).
    cache_path : path-like
        HDF5 cache (see :func:`lib.features.cache.extract_cached`); datasets ``layer_NNN``.
    pooling, layers
        See :func:`vision_hidden_states`.
    batch_size : int
    device : str
    desc : str
        Progress-bar label.

    Returns
    -------
    features : dict of int to ndarray of shape (len(keys), dim_layer), float32
    """
    state = {}

    def compute(batch):
        if not state:  # load lazily: a complete cache needs no model
            state["model"], state["processor"] = load_vision_model(model_path, device)
        feats = vision_hidden_states(state["model"], state["processor"], images(batch),
                                     pooling=pooling, layers=layers)
        return {_layer_name(i): v for i, v in feats.items()}

    out = extract_cached(cache_path, keys, compute, batch_size=batch_size,
                         desc=desc or Path(str(model_path)).name)
    return _by_layer(out)


# size: 11 independent options: vision_layer_features' (less pooling) plus quantize and the
# two text options of language_hidden_states (max_length, exclude_special_tokens)
def language_layer_features(model_path, captions: Callable[[list[int]], list[list[str]]],
                            keys: Sequence[int], cache_path, layers=None,
                            batch_size: int = 32, device: str = "auto", max_length: int = 64,
                            exclude_special_tokens: bool = True, quantize=None,
                            desc: str = "") -> dict[int, np.ndarray]:
    """Per-layer caption features of a causal LM for many images, cached and resumable.

    Each caption's hidden states are averaged over its tokens (see
    :func:`language_hidden_states`), then the image's captions are averaged.

    Parameters
    ----------
    model_path : str or path-like
        Hub id or local folder (see :func:`load_language_model`).
    captions : callable
        ``captions(keys) -> list of list of str``, e.g. ``PreparedSubject.captions``.
    keys : sequence of int
        Image ids (rows of the result, in this order).
    cache_path : path-like
        HDF5 cache; datasets ``layer_NNN``.
    layers, max_length, exclude_special_tokens
        See :func:`language_hidden_states`.
    batch_size : int
        Images per batch (all their captions go through the model together).
    device, desc
        As in :func:`vision_layer_features`.
    quantize : {None, "8bit", "4bit"}
        See :func:`load_language_model`.

    Returns
    -------
    features : dict of int to ndarray of shape (len(keys), hidden_size), float32
    """
    state = {}

    def compute(batch):
        if not state:
            state["model"], state["tokenizer"] = load_language_model(model_path, device,
                                                                     quantize)
        texts, avg = _caption_texts(captions(batch), batch)
        feats = language_hidden_states(state["model"], state["tokenizer"], texts,
                                       layers=layers, max_length=max_length,
                                       exclude_special_tokens=exclude_special_tokens)
        return {_layer_name(i): avg @ v for i, v in feats.items()}

    out = extract_cached(cache_path, keys, compute, batch_size=batch_size,
                         desc=desc or Path(str(model_path)).name)
    return _by_layer(out)


def _caption_texts(per_image: list[list[str]], batch: list[int]) -> tuple[list[str], np.ndarray]:
    """Every caption of a batch of images, and the matrix that averages them per image.

    Returns
    -------
    texts : list of str, length n_texts
        The captions of ``batch``'s images, image after image.
    avg : ndarray of shape (len(batch), n_texts), float32
        Row i holds 1 / (captions of image i) at image i's captions, 0 elsewhere.
    """
    if len(per_image) != len(batch):
        raise ValueError(f"captions() returned {len(per_image)} lists for {len(batch)} ids.")
    texts, owner = [], []
    for row, caps in enumerate(per_image):
        if not caps:
            raise ValueError(f"Image {batch[row]} has no captions.")
        texts.extend(caps)
        owner.extend([row] * len(caps))
    owner = np.asarray(owner)
    avg = np.zeros((len(batch), len(texts)), dtype=np.float32)
    avg[owner, np.arange(len(texts))] = 1.0
    avg /= avg.sum(axis=1, keepdims=True)
    return texts, avg


# size: 10 parameters: a zoo entry front end forwarding the options of
# vision_layer_features / language_layer_features that lib.encoding passes
def model_layer_features(entry: dict, subject, keys: Sequence[int], cache_dir,
                         models_root=None, layers=None, pooling: str = "mean",
                         batch_size: int = 32, device: str = "auto",
                         quantize=None) -> dict[int, np.ndarray]:
    """Per-layer features of one zoo model for a subject's images, cached per model.

    Parameters
    ----------
    entry : dict
        Zoo entry with ``name``, ``path`` and ``modality`` (``"vision"`` or ``"language"``);
        ``path`` relative to ``models_root`` when that is given.
    subject : lib.nsd.PreparedSubject
        Source of images (``images``) and captions (``captions``).
    keys : sequence of int
        NSD image ids.
    cache_dir : path-like
        Folder of the caches:
        ``<cache_dir>/<modality>_<name>[_<layers>][_<model>][_<input>][_<pooling>].h5``: a
        layer subset gets its own cache, and so does a local model folder whose weights changed
        (the fingerprint hashes the names, sizes and modification times of its files) or a
        subject whose images or captions changed (``subject.input_fingerprint(modality)``,
        where the subject has it); quantized language features get their own cache
        (``_q8bit`` / ``_q4bit``).
    models_root : path-like or None
    layers, pooling, batch_size, device
        See :func:`vision_layer_features` / :func:`language_layer_features`.
    quantize : {None, "8bit", "4bit"}
        Language models only (see :func:`load_language_model`); ignored for vision models.

    Returns
    -------
    features : dict of int to ndarray of shape (len(keys), dim_layer)
    """
    path = entry["path"]
    if models_root is not None and not Path(str(path)).is_absolute():
        path = Path(models_root) / path
    modality = entry.get("modality", "vision")
    safe = str(entry["name"]).replace("/", "__") + _layers_tag(layers) + model_fingerprint(path)
    if hasattr(subject, "input_fingerprint"):
        safe += subject.input_fingerprint(modality)
    if modality == "vision":
        cache = Path(cache_dir) / f"vision_{safe}_{pooling}.h5"
        return vision_layer_features(path, subject.images, keys, cache, pooling=pooling,
                                     layers=layers, batch_size=batch_size, device=device,
                                     desc=str(entry["name"]))
    if modality == "language":
        cache = Path(cache_dir) / f"language_{safe}{f'_q{quantize}' if quantize else ''}.h5"
        return language_layer_features(path, subject.captions, keys, cache, layers=layers,
                                       batch_size=batch_size, device=device, quantize=quantize,
                                       desc=str(entry["name"]))
    raise ValueError(f"Zoo entry {entry['name']!r}: modality must be 'vision' or 'language', "
                     f"got {modality!r}.")


def model_fingerprint(path) -> str:
    """Short hash of a local model folder's files (name, size, mtime); "" for hub ids."""
    from lib.io import stat_fingerprint

    folder = Path(str(path)).expanduser()
    if not folder.is_dir():
        return ""
    return stat_fingerprint(sorted(folder.iterdir()))


def _layers_tag(layers) -> str:
    if layers is None:
        return ""
    if isinstance(layers, (int, np.integer)):
        return f"_k{int(layers)}"
    return "_l" + "-".join(str(int(x)) for x in layers)


def _by_layer(out: dict[str, np.ndarray]) -> dict[int, np.ndarray]:
    return {int(name.split("_")[1]): out[name] for name in sorted(out)
            if name.startswith("layer_")}
