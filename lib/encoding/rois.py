"""ROIs and noise ceilings: voxel masks, ROI means of voxel maps, the ceiling of every ROI.

The noise ceiling of each ROI (:func:`lib.scoring.noise_ceiling`, from the test images'
repetitions) with its chance level gives the scores their context.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

#: ROIs summarised by default (``PreparedSubject.roi_mask`` names).
DEFAULT_ROIS = ("V1", "V2", "V3", "hV4", "faces", "bodies", "places", "words", "nsdgeneral")
#: Early visual and category-selective ROIs (for the peak-layer comparison).
EARLY_ROIS = ("V1", "V2", "V3", "hV4")
CATEGORY_ROIS = ("faces", "bodies", "places", "words")


def roi_masks(subject, rois: Sequence[str] = DEFAULT_ROIS) -> dict[str, np.ndarray]:
    """Boolean voxel masks of the ROIs the subject has (others are skipped with a note).

    Parameters
    ----------
    subject : lib.nsd.PreparedSubject
        Anything with ``roi_mask(name)`` (raising ``KeyError`` for an ROI it lacks).
    rois : sequence of str
        ROI names; an ROI without voxels is left out too.

    Returns
    -------
    masks : dict of str to ndarray of shape (n_voxels,) bool
    """
    masks = {}
    for roi in rois:
        try:
            mask = np.asarray(subject.roi_mask(roi), dtype=bool)
        except KeyError as err:
            print(f"ROI {roi!r} skipped: {err}")
            continue
        if mask.any():
            masks[roi] = mask
    return masks


def summarize_rois(values: np.ndarray,
                   masks: dict[str, np.ndarray]) -> dict[str, tuple[float, int]]:
    """Mean of a per-voxel map within each ROI.

    Parameters
    ----------
    values : ndarray of shape (n_voxels,)
    masks : dict of str to ndarray of shape (n_voxels,) bool

    Returns
    -------
    summary : dict of str to (mean, n_voxels); NaN voxels are ignored.
    """
    out = {}
    for roi, mask in masks.items():
        v = values[mask]
        v = v[np.isfinite(v)]
        out[roi] = (float(v.mean()) if v.size else float("nan"), int(mask.sum()))
    return out


def noise_ceilings(subject, masks: dict[str, np.ndarray], split: str = "test",
                   n_permutations: int = 100, seed: int = 0) -> dict:
    """Noise ceiling of every voxel and ROI for the repetition-averaged betas a model is scored on.

    :func:`lib.scoring.noise_ceiling` with ``n_average`` the typical number of repetitions of
    the split's images. ROI values are pooled over the ROI's voxels (ratio of their mean
    signal and noise variances, no clipping) and given on the scale of the scores,
    ``sqrt(max(NC, 0))``: the Pearson r a perfect model could expect. Their chance level is the
    95th percentile of the same number with image labels shuffled across repeats
    (:func:`lib.scoring.noise_ceiling_null`).

    Parameters
    ----------
    subject : lib.nsd.PreparedSubject
        Source of ``repeats(split)``, (n_images, n_repeats, n_voxels) with NaN for missing
        repeats.
    masks : dict of str to ndarray of shape (n_voxels,) bool
        From :func:`roi_masks`.
    split : {"test", "train"}
    n_permutations : int
        Shuffles behind each ROI's chance level.
    seed : int

    Returns
    -------
    result : dict
        ``voxel`` (n_voxels,) noise ceiling of every voxel (fraction of variance, unclipped),
        ``p_value`` (n_voxels,) its ANOVA F-test, ``roi`` {name: ceiling as r},
        ``roi_null`` {name: chance level as r}, ``n_average`` and ``n_images``.
    """
    from lib.scoring import noise_ceiling, noise_ceiling_null, noise_ceiling_pvalues

    reps = subject.repeats(split)
    counts = np.isfinite(reps[:, :, 0]).sum(axis=1)
    n_average = max(1, round(float(np.median(counts))))

    def as_r(nc):
        return np.sqrt(np.clip(nc, 0.0, 1.0))

    roi, roi_null = {}, {}
    for name, mask in masks.items():
        sub = reps[:, :, mask]
        roi[name] = float(as_r(noise_ceiling(sub, n_average, pooled=True)))
        null = noise_ceiling_null(sub, n_average, pooled=True, n_permutations=n_permutations,
                                  seed=seed)
        roi_null[name] = float(as_r(np.percentile(null, 95)))
    return {"voxel": noise_ceiling(reps, n_average).astype(np.float32),
            "p_value": noise_ceiling_pvalues(reps), "roi": roi, "roi_null": roi_null,
            "n_average": n_average, "n_images": int((counts >= 2).sum())}
