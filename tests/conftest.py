"""Shared fixtures: the micro toy world (built once, cached under data/micro)."""

from __future__ import annotations

import pytest

from lib.config import REPO_ROOT


@pytest.fixture(scope="session")
def micro_root():
    """Root of the micro toy world (``nsd/``, ``models/``), built on first use and cached."""
    from lib.toyworld import build

    out = REPO_ROOT / "data" / "micro"
    build(preset="micro", seed=0, out=out)
    return out
