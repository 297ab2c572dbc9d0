"""Per-target prediction scores, noise ceilings and significance of per-voxel maps.

All scores are vectorised over targets (voxels, feature dimensions) and computed in
float64 over chunks of targets, so (n_samples, 100k targets) arrays never need a float64
copy at once. Inputs may be NumPy arrays or torch tensors; outputs are NumPy arrays.

Noise ceiling
-------------
One definition, :func:`noise_ceiling`. With single-trial responses of ``n_images`` images,
image ``i`` seen ``k_i`` times, a one-way random-effects ANOVA splits each voxel's variance:

- noise variance ``var_noise = MS_within`` (pooled variance across repeats of an image);
- signal variance ``var_signal = (MS_between - MS_within) / k0`` (``k0`` the repeats per
  image, its ANOVA average when they differ), an unbiased estimate that is **not** clipped at
  zero: on responses without image information it scatters around zero;
- the noise ceiling of responses averaged over ``n_average`` trials, the fraction of their
  variance that the image explains:
  ``NC = var_signal / (var_signal + var_noise / n_average)``.

This is NSD's definition (Allen et al. 2022, Methods "Noise ceiling":
``NC = ncsnr^2 / (ncsnr^2 + 1/n_average)`` with ``ncsnr^2 = var_signal / var_noise``) without
NSD's clipping of ``var_signal`` at zero per voxel, which biases the ceiling upward where
there is little or no signal. For an ROI, ``pooled=True`` forms the ratio from the voxels'
mean ``var_signal`` and ``var_noise``. ``NC`` bounds the test R^2 of a model of the averaged
responses; ``sqrt(NC)`` bounds its Pearson r. :func:`noise_ceiling_null` gives the level the
estimate reaches by chance (image labels shuffled across repeats), :func:`noise_ceiling_pvalues`
the ANOVA F-test of ``var_signal > 0`` per voxel.

Significance of maps
--------------------
:func:`fdr_mask` (Benjamini-Hochberg) turns per-voxel p-values into the voxels a map may
show; :func:`significant_r` does it for Pearson correlations over ``n`` samples.
"""

from lib.scoring.ceiling import (
    noise_ceiling,
    noise_ceiling_null,
    noise_ceiling_pvalues,
    significant_noise_ceiling,
)
from lib.scoring.correlation import paired_bootstrap_mean_r, pearson_r, r2_score
from lib.scoring.significance import fdr_mask, pearson_pvalues, significant_r

__all__ = [
    "fdr_mask", "noise_ceiling", "noise_ceiling_null", "noise_ceiling_pvalues",
    "paired_bootstrap_mean_r", "pearson_pvalues", "pearson_r", "r2_score",
    "significant_noise_ceiling", "significant_r",
]
