"""Shared fixtures: the micro toy world (built once, cached under data/micro) and the book's
notebooks run once per session on the micro world and on its null world.

``make test`` runs the suite in several processes (pytest-xdist). A notebook run is made once
per session whichever process needs it first (:func:`once`, under a file lock in a folder the
processes share); the others wait for it and read what it wrote. The world is built once
(``build`` locks its folder), and every process gets its share of the cores' threads.
"""

from __future__ import annotations

import json
import os

import pytest
import yaml

from lib.config import REPO_ROOT, THREAD_VARIABLES, set_thread_variables

PARAMS = REPO_ROOT / "notebooks" / "params"


def pytest_configure(config):
    """In a pytest-xdist worker: threads = cores / workers (torch, BLAS, the notebooks' kernels).

    Without it each of n workers would start a thread per core, and torch slows down several-fold
    when its threads outnumber the cores.
    """
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if workers > 1 and not any(name in os.environ for name in THREAD_VARIABLES):
        set_thread_variables(max(1, (os.cpu_count() or 1) // workers))


def session_dir(tmp_path_factory):
    """The test session's temporary folder, shared by its pytest-xdist processes."""
    base = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        base = base.parent  # above each process's own folder
    return base


def once(tmp_path_factory, name: str, make, while_busy=None):
    """``make(folder)`` once per test session, shared by the pytest-xdist processes.

    The first process to get here runs it in ``<session temp>/<name>`` under a file lock; the
    others wait for the lock and then read its result. A failed ``make`` records nothing (the
    next process tries again).

    Parameters
    ----------
    tmp_path_factory : pytest.TempPathFactory
    name : str
        Folder and record name, unique per kind of work.
    make : callable
        ``make(folder) -> result``, ``result`` JSON-serialisable.
    while_busy : callable or None
        Called, without holding a lock, when another process is making it: other work this
        process will need (the micro book and the null micro book make each other while busy,
        so two processes run them side by side instead of one waiting).

    Returns
    -------
    folder : pathlib.Path
    result : object
        ``make``'s result, read back from JSON.
    """
    from filelock import FileLock, Timeout

    base = session_dir(tmp_path_factory)
    folder, record = base / name, base / f"{name}.json"
    lock = FileLock(str(base / f"{name}.lock"))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        if while_busy is not None:
            try:
                while_busy()
            except Exception:  # its own tests run it again and report the error
                pass
        lock.acquire()
    try:
        if not record.exists():
            folder.mkdir(parents=True, exist_ok=True)
            record.write_text(json.dumps(make(folder)))
    finally:
        lock.release()
    return folder, json.loads(record.read_text())


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

    The book runs on a Dask LocalCluster (``python -m lib.run --scheduler local``): the two
    subjects' chapters run side by side (a worker process per core), so the tests that wait for the
    book start sooner; ``test_jobs`` checks that a serial run gives the same numbers. Shared by
    the end-to-end test (which renders the book around the executed copies) and the science
    tests (which read the files the stages write).
    """
    from lib import run

    out, times = once(tmp_path_factory, "micro_run", _make_micro_book,
                      while_busy=lambda: _null_book(micro_root, tmp_path_factory))
    return run.load_params(PARAMS / "micro.yaml"), out, times


def _make_micro_book(out):
    from lib import run

    return run.run_book(PARAMS / "micro.yaml", out, cwd=REPO_ROOT, scheduler="local")


@pytest.fixture(scope="session")
def micro_null_run(micro_root, tmp_path_factory):
    """The stages 01-06 of ``micro_null.yaml`` run once on subject 1 of the null micro world.

    The null world is built first (its models are linked from ``micro_root``, not retrained).
    To keep the suite short, the run leaves out what no null check reads: notebook 00 (run on
    the normal world by ``micro_run``), subject 2 and chapter 07 (the null checks read subject
    1; ``micro_run`` covers two subjects), the memory sweep and stage 2's head-only control.
    Returns (params, run dir, times).
    """
    return _null_book(micro_root, tmp_path_factory,
                      while_busy=lambda: once(tmp_path_factory, "micro_run", _make_micro_book))


@pytest.fixture(scope="session")
def micro_null_root(micro_root):
    """Root of the null micro world (models linked from ``micro_root``), built on first use."""
    return _build_micro_null(micro_root)


def _build_micro_null(micro_root):
    """The null world of ``micro_null.yaml``: built once, its models linked, not retrained."""
    from lib import run
    from lib.toyworld import build

    params = run.load_params(PARAMS / "micro_null.yaml")
    return build(preset=params["toy_preset"], seed=params["seed"],
                 out=REPO_ROOT / params["toy_root"], null=True, models_from=micro_root)


def _null_book(micro_root, tmp_path_factory, while_busy=None):
    from lib import run

    params = run.load_params(PARAMS / "micro_null.yaml")
    params["notebooks"] = [n for n in params["notebooks"]
                           if n not in ("00_toy_world", "07_across_subjects")]
    params.update(subjects=[params["subject"]], sweeps={}, runs=["stage1", "stage2"],
                  memory_sizes=[1],
                  stage2_head_only_control=False)  # as null.yaml does for the toy world

    def make(out):
        _build_micro_null(micro_root)
        path = out / "micro_null_test.yaml"
        path.write_text(yaml.safe_dump(params))
        return run.run_book(path, out / "run", cwd=REPO_ROOT)

    out, times = once(tmp_path_factory, "micro_null_run", make, while_busy=while_busy)
    return params, out / "run", times
