"""Descriptive summaries of prepared subjects for the data-preparation chapter.

Counts of trials, images and repetitions; per-session value distributions before and after
z-scoring; a label atlas of named ROIs for display. (The reliability of voxel responses is
:func:`lib.scoring.noise_ceiling`.)
"""

from __future__ import annotations

import h5py
import numpy as np
import pandas as pd

from lib.nsd.reader import PreparedSubject


def split_table(subjects) -> pd.DataFrame:
    """Trials, images and repetitions of each split for each prepared subject.

    Parameters
    ----------
    subjects : sequence of PreparedSubject

    Returns
    -------
    table : DataFrame
        One row per (subject, split): sessions, trials, images, images seen 1/2/3+ times,
        voxels.
    """
    rows = []
    for subj in subjects:
        for split in ("train", "test"):
            counts = subj.repeat_counts(split)
            rows.append({
                "subject": subj.subject,
                "split": split,
                "sessions": len(subj.sessions),
                "trials": int(counts.sum()),
                "images": int(counts.size),
                "shown 1x": int((counts == 1).sum()),
                "shown 2x": int((counts == 2).sum()),
                "shown 3x+": int((counts >= 3).sum()),
                "voxels": subj.n_voxels,
            })
    return pd.DataFrame(rows)


def session_value_table(subj: PreparedSubject, n_voxels: int = 300, seed: int = 0) -> pd.DataFrame:
    """Betas of a random sample of voxels, before (percent signal change) and after z-scoring.

    The unscaled values are recovered from the stored statistics
    (``raw = z * std + mean``; exact for every z-scoring mode).

    Returns
    -------
    table : DataFrame
        Columns ``session``, ``split``, ``voxel``, ``raw`` (betas / 300) and ``z``.
    """
    rng = np.random.default_rng(seed)
    cols = np.sort(rng.choice(subj.n_voxels, size=min(n_voxels, subj.n_voxels), replace=False))
    with h5py.File(subj.path, "r") as h5:
        z = h5["betas"][:, cols].astype(np.float32)
        mean = h5["zscore_stats/mean"][:, cols]
        std = h5["zscore_stats/std"][:, cols]
    sess_index = np.searchsorted(subj.sessions, subj.session)
    raw = z * std[sess_index] + mean[sess_index]
    n_t = subj.trial.size
    return pd.DataFrame({
        "session": np.repeat(subj.session, cols.size),
        "split": np.repeat(np.where(subj.is_test, "test", "train"), cols.size),
        "voxel": np.tile(cols, n_t),
        "raw": raw.ravel(),
        "z": z.ravel(),
    })


#: ROIs drawn by :func:`roi_atlas`, in drawing order (later ones win on overlap).
ATLAS_ROIS = ("V1", "V2", "V3", "hV4", "places", "bodies", "words", "faces")


def roi_atlas(subj: PreparedSubject, names=ATLAS_ROIS):
    """Integer label per voxel for a set of ROI names (0 = none), for display.

    Returns
    -------
    labels : ndarray of shape (n_voxels,) int32
        ``k + 1`` for the k-th name of ``used``.
    used : list of str
        The names that were available.
    """
    labels = np.zeros(subj.n_voxels, dtype=np.int32)
    available = set(subj.roi_names())
    used = [n for n in names if n in available]
    for k, name in enumerate(used):
        labels[subj.roi_mask(name)] = k + 1
    return labels, used
