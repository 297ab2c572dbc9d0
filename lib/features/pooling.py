"""Which hidden states to keep, and how one layer's tokens or feature map become a vector.

Layer 0 is the embedding output (``hidden_states[0]``), layer ``i`` the output of block ``i``.
"""

from __future__ import annotations

import numpy as np


def select_layers(n_hidden: int, layers=None) -> list[int]:
    """Indices into ``hidden_states`` to keep.

    Parameters
    ----------
    n_hidden : int
        Number of hidden states the model returns (blocks + 1 for the embeddings).
    layers : None, int or sequence of int
        ``None``: every layer; an int ``k``: ``k`` layers evenly spaced from the first to the
        last (both included); a sequence: those indices (negative ones count from the end).

    Returns
    -------
    layers : list of int
        Sorted unique non-negative indices.
    """
    if layers is None:
        return list(range(n_hidden))
    if isinstance(layers, (int, np.integer)):
        k = int(layers)
        if k < 1:
            raise ValueError(f"layers={layers}: ask for at least one layer.")
        return sorted({int(round(x)) for x in np.linspace(0, n_hidden - 1, min(k, n_hidden))})
    out = set()
    for layer in layers:
        layer = int(layer)
        if not -n_hidden <= layer < n_hidden:
            raise ValueError(
                f"layer {layer} does not exist: the model returns {n_hidden} hidden states "
                f"(0 = embeddings .. {n_hidden - 1} = last block)."
            )
        out.add(layer % n_hidden)
    return sorted(out)


def _n_prefix_tokens(config, n_tokens: int) -> int:
    """Number of non-patch tokens (CLS, distillation, registers) at the start of a sequence."""
    image_size = getattr(config, "image_size", None)
    patch_size = getattr(config, "patch_size", None)
    if isinstance(image_size, (list, tuple)):
        image_size = image_size[0]
    if isinstance(patch_size, (list, tuple)):
        patch_size = patch_size[0]
    if image_size and patch_size:
        n_patches = (int(image_size) // int(patch_size)) ** 2
        if 0 <= n_tokens - n_patches < n_tokens:
            return n_tokens - n_patches
    return 1


def parse_pooling(pooling: str) -> tuple[str, int]:
    """Split a pooling name into its kind and grid size.

    ``"mean"`` and ``"cls"`` give grid size 1; ``"grid<k>"`` (e.g. ``"grid4"``) averages the
    patch tokens or feature map within each cell of a ``k`` x ``k`` grid over the image.
    """
    if pooling in ("mean", "cls"):
        return pooling, 1
    if isinstance(pooling, str) and pooling.startswith("grid") and pooling[4:].isdigit():
        k = int(pooling[4:])
        if k >= 1:
            return "grid", k
    raise ValueError(f"pooling must be 'mean', 'cls' or 'grid<k>' (e.g. 'grid4'), got {pooling!r}.")


def pool_hidden_state(h, config, pooling: str = "mean"):
    """Pool one layer's hidden state to one vector per image.

    Parameters
    ----------
    h : torch.Tensor of shape (batch, tokens, dim) or (batch, channels, height, width)
        Token sequence or convolutional feature map.
    config : transformers config
        The model's config (to count the prefix tokens of a token model).
    pooling : {"mean", "cls", "grid<k>"}
        ``"mean"``: mean over patch tokens (prefix tokens such as CLS excluded) or over the
        feature map; ``"cls"``: the first token (feature maps are averaged); ``"grid<k>"``:
        the mean within each cell of a ``k`` x ``k`` grid over the image, which keeps where
        things are (what retinotopic early visual cortex needs); the patch grid must be square.

    Returns
    -------
    features : torch.Tensor of shape (batch, dim) or, for ``grid<k>``, (batch, dim * k * k)
        Grid features are ordered channel-major (all cells of channel 0 first).
    """
    import torch.nn.functional as F

    kind, k = parse_pooling(pooling)
    if h.ndim == 4:
        if kind != "grid":
            return h.mean(dim=(2, 3))
        return F.adaptive_avg_pool2d(h, k).flatten(1)
    if h.ndim != 3:
        raise ValueError(f"Unexpected hidden-state shape {tuple(h.shape)}.")
    if kind == "cls":
        return h[:, 0]
    patches = h[:, _n_prefix_tokens(config, h.shape[1]) :]
    if kind == "mean":
        return patches.mean(dim=1)
    side = round(patches.shape[1] ** 0.5)
    if side * side != patches.shape[1]:
        raise ValueError(f"pooling={pooling!r} needs a square patch grid; got "
                         f"{patches.shape[1]} patch tokens.")
    fmap = patches.transpose(1, 2).reshape(h.shape[0], h.shape[2], side, side)
    return F.adaptive_avg_pool2d(fmap, k).flatten(1)
