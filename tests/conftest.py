"""Shared fixtures: the micro toy world (built once, cached under data/micro) and the book's
notebooks run once per session on the micro world and on its null world.

``make test`` runs the suite in several processes (pytest-xdist, ``--dist loadgroup``). Each
process builds the session fixtures its tests need, so the tests of the micro book and of the
null micro book are kept in one process each (:func:`pytest_collection_modifyitems`), the world
is built once (``build`` locks its folder), and every process gets its share of the cores' threads.
"""

from __future__ import annotations

import os

import pytest
import yaml

from lib.config import REPO_ROOT

PARAMS = REPO_ROOT / "notebooks" / "params"
#: Session fixtures that run notebooks; the tests that use one share a pytest-xdist process.
BOOK_FIXTURES = ("micro_run", "micro_null_run")
#: Parametrized fixtures that pick a book by name at run time (tests/test_science.py).
BOOK_BY_PARAM = {"world": {"micro": "micro_run"}, "null_world": {"micro_null": "micro_null_run"}}
_THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


def pytest_configure(config):
    """In a pytest-xdist worker: threads = cores / workers (torch, BLAS, the notebooks' kernels).

    Without it each of n workers would start a thread per core, and torch slows down several-fold
    when its threads outnumber the cores.
    """
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if workers > 1 and not any(name in os.environ for name in _THREAD_VARIABLES):
        threads = str(max(1, (os.cpu_count() or 1) // workers))
        for name in _THREAD_VARIABLES:
            os.environ[name] = threads


def book_fixture(item) -> str | None:
    """The notebook-running session fixture ``item`` needs, if any."""
    for name in BOOK_FIXTURES:
        if name in getattr(item, "fixturenames", ()):
            return name
    params = getattr(getattr(item, "callspec", None), "params", {})
    for fixture, books in BOOK_BY_PARAM.items():
        if params.get(fixture) in books:
            return books[params[fixture]]
    return None


@pytest.hookimpl(tryfirst=True)  # before pytest-xdist reads the groups
def pytest_collection_modifyitems(config, items):
    """Put the tests of each notebook-running fixture into one pytest-xdist group (process)."""
    for item in items:
        name = book_fixture(item)
        if name:
            item.add_marker(pytest.mark.xdist_group(name))


@pytest.fixture(scope="session")
def micro_root():
    """Root of the micro toy world (``nsd/``, ``models/``), built on first use and cached."""
    from lib.toyworld import build

    out = REPO_ROOT / "data" / "micro"
    build(preset="micro", seed=0, out=out)  # locked: other test processes wait for one build
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
    """The stages 01-06 of ``micro_null.yaml`` run once on subject 1 of the null micro world.

    The null world is built first (its models are linked from ``micro_root``, not retrained).
    To keep the suite short, the run leaves out what no null check reads: notebook 00 (run on
    the normal world by ``micro_run``), subject 2 and chapter 07 (the null checks read subject
    1; ``micro_run`` covers two subjects), the memory sweep and stage 2's head-only control.
    Returns (params, run dir, times).
    """
    from lib import run
    from lib.toyworld import build

    params = run.load_params(PARAMS / "micro_null.yaml")
    build(preset=params["toy_preset"], seed=params["seed"], out=REPO_ROOT / params["toy_root"],
          null=True, models_from=micro_root)
    params["notebooks"] = [n for n in params["notebooks"]
                           if n not in ("00_toy_world", "07_across_subjects")]
    params.update(subjects=[params["subject"]], sweeps={}, runs=["stage1", "stage2"],
                  memory_sizes=[1],
                  stage2_head_only_control=False)  # as null.yaml does for the toy world
    out = tmp_path_factory.mktemp("micro_null_run")
    path = out / "micro_null_test.yaml"
    path.write_text(yaml.safe_dump(params))
    times = run.run_book(path, out / "run", cwd=REPO_ROOT)
    return params, out / "run", times
