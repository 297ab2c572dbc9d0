"""The toy world: a simulated NSD in NSD's own file layout, plus small BLIP-2-family models.

Import-light on purpose: nothing heavy (torch, nilearn) is imported until it is used.

- :mod:`lib.toyworld.scenes`    scenes (place + objects), PIL rendering, ground-truth latents
- :mod:`lib.toyworld.captions`  COCO-style captions from templates and paraphrases
- :mod:`lib.toyworld.brain`     MNI 4 mm grid, ROIs and the simulated voxel responses
- :mod:`lib.toyworld.layout`    writers for NSD's raw file layout
- :mod:`lib.toyworld.build`     :func:`build` (world + models, cached); CLI ``python -m lib.toyworld``
- :mod:`lib.toyworld.models`    the toy models (trained on scenes apart from the experiment)
"""

from __future__ import annotations

__all__ = ["build"]


def build(*args, **kwargs):
    """Build (or reuse) a toy world; see :func:`lib.toyworld.build.build`."""
    from .build import build as _build

    return _build(*args, **kwargs)
