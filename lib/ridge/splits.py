"""Cross-validation splits of the ridge: contiguous k-fold, or group-aware on ``groups``."""

from __future__ import annotations

import numpy as np


def _group_splits(cv, n: int, groups) -> list:
    groups = np.asarray(groups)
    if groups.shape != (n,):
        raise ValueError(f"groups has shape {groups.shape}; expected ({n},), one label per "
                         "sample (e.g. the image id of every trial).")
    if isinstance(cv, (int, np.integer)):
        from sklearn.model_selection import GroupKFold

        n_groups = np.unique(groups).size
        if not 2 <= int(cv) <= n_groups:
            raise ValueError(f"cv={cv} folds is invalid for {n_groups} groups; use "
                             "2 <= cv <= number of groups.")
        cv = GroupKFold(n_splits=int(cv))
    if not hasattr(cv, "split"):
        raise ValueError("groups were given but cv is a list of splits; pass an int or a "
                         "splitter with split(X, y, groups) (e.g. GroupKFold).")
    splits = [(np.asarray(tr), np.asarray(va))
              for tr, va in cv.split(np.zeros((n, 1)), None, groups)]
    for tr, va in splits:
        if np.intersect1d(groups[tr], groups[va]).size:
            raise ValueError(f"the splitter {cv!r} puts a group on both sides of a fold; use "
                             "a group-aware splitter such as GroupKFold.")
    return splits


def cv_splits(cv, n: int, groups=None) -> list[tuple[np.ndarray, np.ndarray]]:
    """(train, validation) index pairs for ``cv``.

    Parameters
    ----------
    cv : int, splitter with ``split``, or iterable of (train, validation) index pairs
        int ``k``: contiguous k-fold without shuffling (as scikit-learn's ``KFold(k)``:
        neighbouring fMRI samples stay together), or ``GroupKFold(k)`` when ``groups``
        is given.
    n : int
        Number of samples.
    groups : array-like of shape (n,) or None
        Group label of every sample; no group is ever on both sides of a fold.

    Returns
    -------
    splits : list of (ndarray, ndarray)
    """
    if groups is not None:
        return _group_splits(cv, n, groups)
    if isinstance(cv, (int, np.integer)):
        k = int(cv)
        if not 2 <= k <= n:
            raise ValueError(f"cv={k} folds is invalid for {n} samples; use 2 <= cv <= n_samples.")
        sizes = np.full(k, n // k)
        sizes[: n % k] += 1
        edges = np.concatenate([[0], np.cumsum(sizes)])
        idx = np.arange(n)
        return [(np.concatenate([idx[: edges[i]], idx[edges[i + 1] :]]),
                 idx[edges[i] : edges[i + 1]])
                for i in range(k)]
    if hasattr(cv, "split"):
        return [(np.asarray(tr), np.asarray(va)) for tr, va in cv.split(np.zeros((n, 1)))]
    return [(np.asarray(tr), np.asarray(va)) for tr, va in cv]
