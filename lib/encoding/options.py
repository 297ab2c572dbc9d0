"""The options of the encoding analysis: feature extraction and ridge fits, in one bundle."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class EncodingOptions:
    """How features are extracted and ridge is fitted (the same for every model of a zoo).

    Attributes
    ----------
    layers : None, int or sequence of int
        Layer selection (see :func:`lib.features.hidden.select_layers`): None = every layer.
    pooling : {"mean", "cls", "grid<k>"}
        Pooling of vision features (see :func:`lib.features.hidden.pool_hidden_state`);
        ``"grid4"`` keeps a 4 x 4 map of where things are, which retinotopic cortex needs.
    batch_size : int
    device : str
    quantize : {None, "8bit", "4bit"}
        Load language models in 8 or 4 bits (CUDA and bitsandbytes only).
    alphas : array-like or None
        Ridge penalties (see :func:`lib.encoding.fit_layer`).
    max_features : int or None
        Reduce wider layers to this many features (fitted on the training images).
    reduction : {"pca", "random"}
    seed : int
    """

    layers: Any = None
    pooling: str = "mean"
    batch_size: int = 32
    device: str = "auto"
    quantize: str | None = None
    alphas: Any = None
    max_features: int | None = None
    reduction: str = "pca"
    seed: int = 0
