"""Shared fixtures: the micro toy world (built once, cached under data/micro) and the book's
notebooks run once per session on the micro world and on its null world."""

from __future__ import annotations

import pytest
import yaml

from lib.config import REPO_ROOT

PARAMS = REPO_ROOT / "notebooks" / "params"


@pytest.fixture(scope="session")
def micro_root():
    """Root of the micro toy world (``nsd/``, ``models/``), built on first use and cached."""
    from lib.toyworld import build

    out = REPO_ROOT / "data" / "micro"
    build(preset="micro", seed=0, out=out)
    return out


@pytest.fixture(scope="session")
def micro_run(micro_root, tmp_path_factory):
    """Every notebook of ``micro.yaml`` run once (papermill); returns (params, run dir, times).

    Shared by the end-to-end test (which renders the book around the executed copies) and the
    science tests (which read the files the stages write).
    """
    from lib import run

    out = tmp_path_factory.mktemp("micro_run")
    times = run.run_book(PARAMS / "micro.yaml", out, cwd=REPO_ROOT)
    return run.load_params(PARAMS / "micro.yaml"), out, times


@pytest.fixture(scope="session")
def micro_null_run(micro_root, tmp_path_factory):
    """The stages 01-06 of ``micro_null.yaml`` run once on the null micro world.

    The null world is built first (its models are linked from ``micro_root``, not retrained).
    To keep the suite short, the run leaves out what no null check reads: notebook 00 (run on
    the normal world by ``micro_run``), the memory sweep and stage 2's head-only control.
    Returns (params, run dir, times).
    """
    from lib import run
    from lib.toyworld import build

    params = run.load_params(PARAMS / "micro_null.yaml")
    build(preset=params["toy_preset"], seed=params["seed"], out=REPO_ROOT / params["toy_root"],
          null=True, models_from=micro_root)
    params["notebooks"] = [n for n in params["notebooks"] if n != "00_toy_world"]
    params.update(sweeps={}, runs=["stage1", "stage2"], memory_sizes=[1],
                  stage2_head_only_control=False)  # as null.yaml does for the toy world
    out = tmp_path_factory.mktemp("micro_null_run")
    path = out / "micro_null_test.yaml"
    path.write_text(yaml.safe_dump(params))
    times = run.run_book(path, out / "run", cwd=REPO_ROOT)
    return params, out / "run", times
