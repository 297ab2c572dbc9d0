"""Figures for the book: interactive plotly output that works offline, brain maps, galleries.

- :mod:`lib.plotting.brain`: :func:`plot_roi_slices`, :func:`plot_surface`,
  :func:`surface_plotly`, :func:`volume_to_surface`, :func:`nsd_func_to_mni`;
- :mod:`lib.plotting.figures`: :func:`show_plotly`, :func:`plot_gallery`, and chapter 02's
  :func:`predictivity_vs_size`, :func:`plot_depth_profiles`, :func:`plot_roi_comparison`.
"""

from .brain import (
    SURFACE_VIEWS,
    _fsaverage5,  # noqa: F401 (the meshes, for tests/test_plotting.py)
    nsd_func_to_mni,
    plot_roi_slices,
    plot_surface,
    surface_plotly,
    volume_to_surface,
)
from .figures import (
    plot_depth_profiles,
    plot_gallery,
    plot_roi_comparison,
    predictivity_vs_size,
    show_plotly,
)

__all__ = [
    "SURFACE_VIEWS",
    "nsd_func_to_mni",
    "plot_depth_profiles",
    "plot_gallery",
    "plot_roi_comparison",
    "plot_roi_slices",
    "plot_surface",
    "predictivity_vs_size",
    "show_plotly",
    "surface_plotly",
    "volume_to_surface",
]
