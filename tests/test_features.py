"""Tests of lib.features: the resumable HDF5 cache and per-layer hidden-state features."""

from __future__ import annotations

import numpy as np
import pytest

from lib.features.cache import extract_cached


def _features(keys):
    """A deterministic 'model': features depend only on the key."""
    k = np.asarray(keys, dtype=np.float64)
    return {"x": np.stack([np.sin(k), np.cos(k), k**0.5], axis=1).astype(np.float32),
            "y": (k * 2).astype(np.int64)}


class _Killed(RuntimeError):
    pass


def test_extract_cached_resumes_after_kill(tmp_path):
    keys = list(range(100, 137))  # 37 keys: last batch is partial
    path = tmp_path / "cache.h5"
    seen = []

    def killed_after_3(batch):
        if len(seen) == 3:
            raise _Killed("simulated kill")
        seen.append(list(batch))
        return _features(batch)

    with pytest.raises(_Killed):
        extract_cached(path, keys, killed_after_3, batch_size=5)
    assert len(seen) == 3
    first = [k for b in seen for k in b]

    resumed = []

    def compute(batch):
        resumed.append(list(batch))
        return _features(batch)

    out = extract_cached(path, keys, compute, batch_size=5)
    rest = [k for b in resumed for k in b]
    # only the missing keys were computed, each exactly once
    assert sorted(rest) == sorted(set(keys) - set(first))
    assert len(rest) == len(set(rest))
    direct = _features(keys)
    for name in direct:
        np.testing.assert_array_equal(out[name], direct[name])
    # a third call computes nothing
    resumed.clear()
    again = extract_cached(path, keys, compute, batch_size=5)
    assert resumed == []
    np.testing.assert_array_equal(again["x"], direct["x"])


def test_extract_cached_rejects_other_keys(tmp_path):
    path = tmp_path / "cache.h5"
    extract_cached(path, [1, 2, 3], _features, batch_size=2)
    with pytest.raises(ValueError, match="other keys"):
        extract_cached(path, [1, 2, 4], _features, batch_size=2)


def test_extract_cached_checks_batch_shape(tmp_path):
    with pytest.raises(ValueError, match="first dimension"):
        extract_cached(tmp_path / "c.h5", [1, 2, 3], lambda b: {"x": np.zeros((1, 2))},
                       batch_size=2)
