"""Resumable, batched feature extraction cached in one HDF5 file per feature set.

A killed run leaves every finished batch on disk (each batch is flushed), and the next call
computes only the missing ones. Processes that fill the same cache at once (chapters side by side
on Dask workers, e.g. stage 1 at two memory sizes) take turns: the second waits for the first,
then finds its rows done.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np


def extract_cached(
    path: str | os.PathLike,
    keys: Sequence[int],
    compute: Callable[[list[int]], dict[str, np.ndarray]],
    batch_size: int = 32,
    desc: str = "",
) -> dict[str, np.ndarray]:
    """Compute features for ``keys`` in batches, caching every batch in an HDF5 file.

    Parameters
    ----------
    path : path-like
        HDF5 cache file. It holds one dataset per name returned by ``compute``, of shape
        ``(len(keys), ...)`` in the order of ``keys``, a ``key`` dataset (the keys) and a
        ``done`` mask (which rows are computed). Created if missing.
    keys : sequence of int
        Item identifiers (e.g. NSD image ids), one row each. A cache written for different
        keys is an error (delete the file or use another path).
    compute : callable
        ``compute(batch_keys: list[int]) -> dict[str, ndarray]``; every array has first
        dimension ``len(batch_keys)``; names, trailing shapes and dtypes must not change
        between batches.
    batch_size : int
        Number of keys per call to ``compute`` (and per flush).
    desc : str
        Label of the progress bar.

    Returns
    -------
    features : dict of str to ndarray
        ``{name: ndarray of shape (len(keys), ...)}`` read back from the cache.
    """
    import h5py
    from tqdm.auto import tqdm

    from lib.io import exclusive_lock

    path = Path(path)
    keys = _check_keys(keys, batch_size)
    n = len(keys)
    lock = exclusive_lock(path.with_name(path.name + ".lock"),
                          f"{path.name}: another process is filling this cache; waiting for it")
    with lock, h5py.File(path, "a") as f:
        todo = np.flatnonzero(~_done_rows(f, keys, path))
        batches = [todo[i : i + batch_size] for i in range(0, len(todo), batch_size)]
        with tqdm(total=n, initial=n - len(todo), desc=desc or path.stem, unit="item") as bar:
            for rows in batches:
                _write_batch(f, rows, compute([int(k) for k in keys[rows]]), n, batch_size, path)
                bar.update(len(rows))
        names = [k for k in f.keys() if k not in ("key", "done")]
        return {name: f[name][()] for name in names}


def _check_keys(keys, batch_size: int) -> np.ndarray:
    """``keys`` as a unique int64 array of shape (n,), after checking ``batch_size``."""
    keys = np.asarray(list(keys), dtype=np.int64)
    if keys.ndim != 1:
        raise ValueError(f"keys must be one-dimensional, got shape {keys.shape}.")
    if len(np.unique(keys)) != len(keys):
        raise ValueError("keys must be unique.")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}.")
    return keys


def _done_rows(f, keys: np.ndarray, path: Path) -> np.ndarray:
    """The ``done`` mask (n,) of the open cache ``f``; starts one for ``keys`` if it is new."""
    n = len(keys)
    if "key" in f:
        stored = f["key"][()]
        if stored.shape != keys.shape or not np.array_equal(stored, keys):
            raise ValueError(
                f"Cache {path} was written for other keys ({len(stored)} stored, {n} asked); "
                "delete it or choose another cache path."
            )
    else:
        f.create_dataset("key", data=keys)
        f.create_dataset("done", data=np.zeros(n, dtype=bool))
    return f["done"][()]


def _write_batch(f, rows, out, n, batch_size, path) -> None:
    """Store one computed batch at ``rows`` of the open cache ``f``, mark it done, flush."""
    if not isinstance(out, dict) or not out:
        raise TypeError("compute must return a non-empty dict of arrays.")
    for name, arr in out.items():
        if name in ("key", "done"):
            raise ValueError(f"compute returned the reserved name {name!r}.")
        arr = np.asarray(arr)
        if arr.ndim == 0 or arr.shape[0] != len(rows):
            raise ValueError(
                f"compute returned {name!r} of shape {arr.shape} for a batch of {len(rows)} keys; "
                "the first dimension must be the batch."
            )
        if name not in f:
            chunks = (max(1, min(batch_size, n)),) + arr.shape[1:]
            f.create_dataset(name, shape=(n,) + arr.shape[1:], dtype=arr.dtype, chunks=chunks)
        ds = f[name]
        if ds.shape[1:] != arr.shape[1:]:
            raise ValueError(
                f"compute returned {name!r} of trailing shape {arr.shape[1:]}, but the cache "
                f"{path} holds {ds.shape[1:]}; delete the cache if the model changed."
            )
        if rows[-1] - rows[0] + 1 == len(rows):  # contiguous rows: one slice write
            ds[rows[0] : rows[-1] + 1] = arr
        else:
            ds[rows] = arr
    f["done"][rows] = True
    f.flush()


def rows_for(keys, wanted) -> np.ndarray:
    """Row index of every key in ``wanted`` within ``keys`` (e.g. nsd ids of a feature cache).

    Parameters
    ----------
    keys : array-like of shape (n_rows,)
        Keys of the stored rows, in storage order (need not be sorted).
    wanted : array-like of shape (n_wanted,)
        Keys to look up.

    Returns
    -------
    rows : ndarray of shape (n_wanted,)

    Raises
    ------
    KeyError
        When a wanted key is not stored.
    """
    keys, wanted = np.asarray(keys), np.asarray(wanted)
    order = np.argsort(keys)
    pos = np.clip(np.searchsorted(keys, wanted, sorter=order), 0, len(keys) - 1)
    rows = order[pos]
    missing = keys[rows] != wanted
    if missing.any():
        raise KeyError(f"{int(missing.sum())} ids have no features "
                       f"(e.g. {wanted[missing][:5].tolist()})")
    return rows
