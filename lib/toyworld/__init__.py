"""The toy world: a simulated NSD in NSD's own file layout, plus small BLIP-2-family models.

Import-light: nothing heavy (torch, nilearn, the models) is imported until it is used.

- :mod:`lib.toyworld.scenes`    scenes (place + objects), PIL rendering, ground-truth latents
- :mod:`lib.toyworld.captions`  COCO-style captions from templates and paraphrases
- :mod:`lib.toyworld.anatomy`   MNI 4 mm grid, NSD's ROIs and early visual retinotopy
- :mod:`lib.toyworld.stimulus_features` pixel feature maps, objects and semantic axes of scenes
- :mod:`lib.toyworld.brain`     voxel tuning and the simulated responses
- :mod:`lib.toyworld.layout`    writers for NSD's raw file layout
- :mod:`lib.toyworld.build`     :func:`build` (world + models, cached), :func:`world_subjects`;
  CLI ``python -m lib.toyworld``
- :mod:`lib.toyworld.models`    the toy models (trained on scenes apart from the experiment)
"""

from __future__ import annotations

# Eager on purpose: the submodule ``lib.toyworld.build`` would otherwise shadow the function
# once imported. It is light (NumPy only); torch, nilearn and the models load when used.
from .build import build, world_subjects
from .presets import get_preset

__all__ = ["build", "get_preset", "world_subjects"]
