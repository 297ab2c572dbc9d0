"""lib.config and lib.io: data roots, devices, seeds, paths, atomic writes."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from lib import config, io


def test_data_root_precedence(tmp_path, monkeypatch):
    monkeypatch.delenv(config.DATA_ENV, raising=False)
    monkeypatch.chdir(tmp_path)
    assert config.data_root() == (tmp_path / "data").resolve()
    monkeypatch.setenv(config.DATA_ENV, str(tmp_path / "env"))
    assert config.data_root() == (tmp_path / "env").resolve()
    assert config.data_root(tmp_path / "arg") == (tmp_path / "arg").resolve()


def test_resolve_device():
    assert config.resolve_device("cpu").type == "cpu"
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert config.resolve_device("auto").type == expected
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="CUDA is not available"):
            config.resolve_device("cuda")


def test_seed_everything_is_repeatable():
    a = config.seed_everything(3).normal(size=4), torch.rand(3)
    b = config.seed_everything(3).normal(size=4), torch.rand(3)
    np.testing.assert_array_equal(a[0], b[0])
    assert torch.equal(a[1], b[1])


def test_stage_paths(tmp_path):
    assert config.subject_name(1) == "subj01" and config.subject_name("subj07") == "subj07"
    path = config.stage_dir(tmp_path, "toy", 2, "decoding", "stage1")
    assert path == tmp_path / "toy" / "subj02" / "decoding" / "stage1" and path.is_dir()


def test_atomic_path_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "sub" / "result.json"
    with pytest.raises(RuntimeError):
        with io.atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("interrupted")
    assert not target.exists() and list(target.parent.iterdir()) == []
    io.write_json(target, {"a": 1})
    assert json.loads(target.read_text()) == {"a": 1}
    assert [p.name for p in target.parent.iterdir()] == ["result.json"]


def test_show_progress_follows_tqdm_disable(monkeypatch):
    monkeypatch.delenv("TQDM_DISABLE", raising=False)
    assert config.show_progress() and not config.show_progress(False)
    monkeypatch.setenv("TQDM_DISABLE", "1")
    assert not config.show_progress(True)
