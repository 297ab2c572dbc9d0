"""Per-voxel z-scoring of single-trial betas with training-trial statistics (DESIGN.md §5).

Preparation's key normalisation: :func:`zscore_session` (the default, one session at a time)
and :class:`GlobalStats` (``zscore="global"``: one mean and standard deviation per voxel over
the training trials of all sessions). Test (shared-image) trials are z-scored with these
statistics but never contribute to them.
"""

from __future__ import annotations

import numpy as np

from lib.nsd.errors import NSDFormatError

ZSCORE_MODES = ("session", "global", "none")
_STAT_BLOCK = 2048


def train_stats(values: np.ndarray, is_test: np.ndarray):
    """Mean and standard deviation (ddof=0) per voxel over training rows only.

    Parameters
    ----------
    values : ndarray of shape (n_trials, n_voxels)
    is_test : ndarray of shape (n_trials,) bool

    Returns
    -------
    mean, std : ndarray of shape (n_voxels,) float64; std is 1 where it is 0.
    """
    train = ~np.asarray(is_test, dtype=bool)
    # science hygiene: statistics never see a test (shared-image) trial
    assert not np.any(is_test[train]), "a test trial would contribute to z-scoring statistics"
    if train.sum() < 2:
        raise NSDFormatError(
            f"Only {int(train.sum())} training trial(s) available for z-scoring statistics; "
            "need at least 2. Use zscore='global' or 'none', or add sessions."
        )
    rows = np.flatnonzero(train)
    mean = np.empty(values.shape[1])
    std = np.empty(values.shape[1])
    for lo in range(0, values.shape[1], _STAT_BLOCK):  # column blocks bound the float64 copies
        x = values[rows, lo : lo + _STAT_BLOCK].astype(np.float64)
        mean[lo : lo + _STAT_BLOCK] = x.mean(axis=0)
        std[lo : lo + _STAT_BLOCK] = x.std(axis=0)
    std[std == 0] = 1.0
    return mean, std


def zscore_session(betas: np.ndarray, is_test: np.ndarray, inplace: bool = False):
    """Z-score each voxel within one session, with that session's training trials only.

    Why per session: a voxel's betas drift from one scanning session to the next in offset and
    gain (head position, shimming, coil, physiology), and the repetitions of an image fall in
    different sessions. Left in, these drifts look like trial-to-trial noise; removing each
    session's own mean and scale takes them out.

    Why training trials only: the mean and standard deviation are computed from the session's
    training trials and then applied to all its trials, test (shared-image) trials included.
    The test trials are transformed but never contribute to the statistics, so nothing about
    the test responses reaches the prepared training data or any choice made on it. (All of a
    session's training trials enter the statistics, including those later held out for
    validation: an unsupervised per-session shift and scale, not a fitted choice.)

    Parameters
    ----------
    betas : ndarray of shape (n_session_trials, n_voxels) float32
        One session's betas (percent signal change).
    is_test : ndarray of shape (n_session_trials,) bool
        True for the session's test trials.
    inplace : bool
        Overwrite ``betas`` (preparation does, to keep one session in memory, not two).

    Returns
    -------
    z : ndarray of shape (n_session_trials, n_voxels) float32
        ``(betas - mean) / std``; ``betas`` itself when ``inplace``.
    mean, std : ndarray of shape (n_voxels,) float64
        The training-trial statistics (ddof=0; std 1 where it is 0).
    """
    mean, std = train_stats(betas, is_test)
    z = betas if inplace else betas.copy()
    z -= mean.astype(np.float32)
    z /= std.astype(np.float32)
    return z, mean, std


class GlobalStats:
    """Running per-voxel sums over the training trials of every session (``zscore="global"``).

    Parameters
    ----------
    n_voxels : int
    """

    def __init__(self, n_voxels: int):
        self.total = np.zeros(n_voxels)
        self.total_sq = np.zeros(n_voxels)
        self.n_train = 0

    def add(self, betas: np.ndarray, is_test: np.ndarray) -> None:
        """Add one session's training rows; ``betas`` (n_trials, n_voxels), ``is_test`` (n,)."""
        rows = np.flatnonzero(~is_test)
        for c in range(0, betas.shape[1], _STAT_BLOCK):
            train = betas[rows, c : c + _STAT_BLOCK].astype(np.float64)
            self.total[c : c + _STAT_BLOCK] += train.sum(axis=0)
            self.total_sq[c : c + _STAT_BLOCK] += (train**2).sum(axis=0)
        self.n_train += rows.size

    def mean_std(self):
        """Mean and standard deviation (ddof=0), each of shape (n_voxels,); std 1 where 0."""
        if self.n_train < 2:
            raise NSDFormatError("Fewer than 2 training trials: cannot z-score globally.")
        mean = self.total / self.n_train
        std = np.sqrt(np.maximum(self.total_sq / self.n_train - mean**2, 0.0))
        std[std == 0] = 1.0
        return mean, std
