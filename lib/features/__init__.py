"""Feature extraction: per-layer hidden states of vision and language models, cached to HDF5.

Submodules are imported lazily (``lib.features.cache``, ``lib.features.hidden`` with
``lib.features.loading`` and ``lib.features.pooling``, ``lib.features.qformer``), so importing
this package is cheap and a missing optional submodule does not break the others.
"""

from __future__ import annotations

import importlib

_LAZY = {
    "extract_cached": "cache",
    "vision_layer_features": "hidden",
    "language_layer_features": "hidden",
    "model_layer_features": "hidden",
    "extract_qformer_features": "qformer",
    "qformer_features": "qformer",
}

__all__ = sorted(_LAZY)


def __getattr__(name):
    if name in _LAZY:
        module = importlib.import_module(f"{__name__}.{_LAZY[name]}")
        return getattr(module, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
