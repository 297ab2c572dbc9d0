"""Run the book's notebooks with papermill for one parameter set, as a job graph.

Usage::

    python -m lib.run --params notebooks/params/toy.yaml            # every notebook, serially
    python -m lib.run --params notebooks/params/toy.yaml --only 03_alignment_ridge
    python -m lib.run --params notebooks/params/micro.yaml --output-dir /tmp/run --build-book
    python -m lib.run --params notebooks/params/toy.yaml --scheduler local   # on Dask
    python -m lib.run --params notebooks/params/toy.yaml --force    # re-run up-to-date jobs
    python -m lib.run --params notebooks/params/nsd.yaml --check   # only the preflight

A run first checks, in seconds, that the data, models, disk and memory it needs are there
(:mod:`lib.preflight`) and stops with every problem and its fix if not; ``--no-check`` skips it.

The parameter file lists the notebooks to run (``notebooks:``), the subjects (``subjects:``, the
book showing ``subject:``) and the parameters shared by all of them. Each notebook receives only
the parameters it declares in its ``parameters`` cell, so one file drives the whole book. An
optional ``sweeps:`` mapping re-runs a notebook once per value of one parameter, as separate
papermill runs (used for the memory-size ablation)::

    sweeps:
      03_alignment_ridge: {memory_size: [1, 3, 5, 7]}

:mod:`lib.jobs` plans the jobs and their dependencies and skips jobs that are up to date;
:mod:`lib.cluster` executes them (serially, or on Dask), each through
:func:`lib.notebook_job.run_job`. Executed notebooks land in ``book/run/``
(``<name>.ipynb``; sweep runs as ``<name>__<param>-<value>.ipynb``; other subjects under
``subjects/subjXX/``), where Jupyter Book picks them up. The cell papermill injects with the
parameters is tagged ``remove-cell`` so the rendered book does not show it.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from lib.config import PARAMS_ENV, REPO_ROOT
from lib.jobs import Job, plan_graph
from lib.notebook_job import NotebookFailed, declared_default, job_parameters

NOTEBOOK_DIR = REPO_ROOT / "notebooks"
DEFAULT_OUTPUT_DIR = REPO_ROOT / "book" / "run"



#: Environment of batch-executed notebooks: no progress bars, no informational model-load reports.
BATCH_ENVIRONMENT = {
    "TQDM_DISABLE": "1",
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",
    "TRANSFORMERS_VERBOSITY": "error",
    "PYTHONWARNINGS": "ignore:IProgress not found",
}


def load_params(path: str | os.PathLike) -> dict[str, Any]:
    """Read a parameter file and check its ``notebooks`` list.

    Parameters
    ----------
    path : path-like
        YAML file such as ``notebooks/params/toy.yaml``. A file with ``extends: other.yaml``
        (a path relative to its own folder) takes every key of that file and overrides those
        it sets itself (e.g. ``null.yaml``: the toy book on the null world).

    Returns
    -------
    params : dict
        The file's mapping.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"parameter file {path} not found; pick one of "
            f"{sorted(p.name for p in (NOTEBOOK_DIR / 'params').glob('*.yaml'))}"
        )
    params = yaml.safe_load(path.read_text()) or {}
    if not isinstance(params, dict):
        raise ValueError(f"{path}: expected a mapping of parameter names to values")
    base = params.pop("extends", None)
    if base is not None:  # a variant of another file: its keys, overridden by this file's
        params = {**load_params(path.parent / base), **params}
    names = params.get("notebooks")
    if not names or not isinstance(names, list):
        raise ValueError(f"{path}: expected a 'notebooks:' list naming the notebooks to run")
    return params


def build_toy_world(job: Job, params: dict[str, Any], log=print) -> Path:
    """Build the toy world that ``job`` (00_toy_world) would build, before the chapters start.

    The chapters read only the world's files, not 00's outputs, so once the world is there
    they run beside 00 (:data:`lib.jobs.NEEDS`). Returns at once when the world is up to date
    (as after ``make book``'s build step); 00's own ``build`` call then finds it up to date.

    Parameters
    ----------
    job : Job
        The run's 00_toy_world job: its parameters (the file's, else the notebook's defaults)
        say which world (``toy_root``, ``toy_preset``, ``seed``, ``null_world``, ``subjects``).
    params : dict
        The run's parameters.
    log : callable

    Returns
    -------
    root : Path
        The world's folder.
    """
    from lib.config import resolve_parameter
    from lib.toyworld import build, world_subjects

    given = job_parameters(job, params)
    toy_root, preset, seed, null, subjects = (
        given[k] if k in given else declared_default(job.source, k)
        for k in ("toy_root", "toy_preset", "seed", "null_world", "subjects"))
    root = resolve_parameter("toy_root", toy_root)
    log(f"toy world {preset} (seed {seed}) in {root}: built first if missing or out of date")
    return build(preset=preset, seed=seed, out=root, null=null,
                 n_subjects=world_subjects(preset, subjects))


def _use_this_interpreter_kernel() -> None:
    """Make the ``python3`` kernel resolve to this interpreter's environment first."""
    share = Path(sys.prefix) / "share" / "jupyter"
    if (share / "kernels" / "python3").is_dir():
        paths = [str(share)] + [p for p in os.environ.get("JUPYTER_PATH", "").split(os.pathsep)
                                if p]
        os.environ["JUPYTER_PATH"] = os.pathsep.join(paths)


# size: 68 lines, of which the signature and numpydoc docstring are 44 (the body is 24).
def run_book(
    params_path: str | os.PathLike,
    output_dir: str | os.PathLike = DEFAULT_OUTPUT_DIR,
    only: list[str] | None = None,
    notebook_dir: str | os.PathLike = NOTEBOOK_DIR,
    cwd: str | os.PathLike = REPO_ROOT,
    log=print,
    force: bool = False,
    scheduler: str | None = None,
) -> dict[str, float]:
    """Run the job graph of a parameter set; a failure stops only the jobs that need it.

    Parameters
    ----------
    params_path : path-like
        Parameter file.
    output_dir : path-like
        Where executed notebooks go (``book/run`` for the book).
    only : list of str or None
        Run just these notebooks.
    notebook_dir : path-like
        Folder of the source notebooks.
    cwd : path-like
        Working directory of the notebooks (relative paths in parameters start here).
    log : callable
        Receives one progress line per job and the final table.
    force : bool
        Re-run jobs whose outputs are complete with a matching fingerprint (else skipped).
    scheduler : str or None
        ``None``: one job after another in this process. ``"local"``: a Dask LocalCluster on this
        machine; ``"tcp://host:8786"``: an existing Dask scheduler (see :mod:`lib.cluster`).

    Returns
    -------
    wall_times : dict
        Seconds per executed (not skipped) job, keyed by the executed copy's path relative to
        ``output_dir`` (``03_alignment_ridge.ipynb``,
        ``subjects/subj02/01_data_preparation.ipynb``).

    Raises
    ------
    NotebookFailed
        After the whole graph ran, when any job failed; names every failed notebook and copy.
    """
    from lib import cluster

    params = load_params(params_path)
    jobs = plan_graph(params, output_dir, only, notebook_dir)
    _use_this_interpreter_kernel()
    # Progress bars and load reports help at the keyboard; in a batch run this function reports
    # progress per notebook, and they would fill the rendered pages (override any of these).
    for name, value in BATCH_ENVIRONMENT.items():
        os.environ.setdefault(name, value)
    os.environ.pop(PARAMS_ENV, None)  # JupyterLab's preset: the parameter file decides here
    total = time.perf_counter()
    for job in jobs:
        if job.name == "00_toy_world":
            build_toy_world(job, params, log)
    if scheduler is None:
        results = cluster.run_serial(jobs, params, cwd, force=force, log=log)
    else:
        results = cluster.run_dask(jobs, params, cwd, scheduler, force=force, log=log)
    log(cluster.summary_table(results))
    log(f"{len(jobs)} job(s) in {time.perf_counter() - total:.1f} s")
    failed = [r for r in results if r.status == "failed"]
    if failed:
        raise NotebookFailed("\n".join(r.message for r in failed))
    return {f"{r.key}.ipynb": r.seconds for r in results if r.status == "done"}


def build_book(source_dir: str | os.PathLike = REPO_ROOT, strict: bool = False) -> Path:
    """Build the Jupyter Book at ``source_dir``; return the path of ``index.html``.

    With ``strict``, any Sphinx warning (a broken reference, an output it cannot render) fails
    the build after reporting them all (``-W --keep-going``): what the tests build with.
    """
    exe = Path(sys.executable).with_name("jupyter-book")
    cmd = [str(exe) if exe.exists() else "jupyter-book", "build", str(source_dir), "--quiet"]
    subprocess.run(cmd + (["-W", "--keep-going"] if strict else []), check=True)
    return Path(source_dir) / "_build" / "html" / "index.html"


def preflight(params_path, output_dir=DEFAULT_OUTPUT_DIR, only=None, log=print) -> int:
    """Run :func:`lib.preflight.run_preflight` for the notebooks a run would execute.

    Returns
    -------
    status : int
        0 when nothing is missing, else 1 (every problem is printed with its fix).
    """
    from lib.preflight import format_report, run_preflight

    try:
        params = load_params(params_path)
        planned = list(dict.fromkeys(j.name for j in plan_graph(params, output_dir, only)))
    except (FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    report = run_preflight(params, planned, cwd=REPO_ROOT)
    log(format_report(report))
    if not report.ok:
        print(f"error: the preflight found {len(report.problems)} problem(s) (listed above); "
              "fix them, or run with --no-check to start anyway", file=sys.stderr)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lib.run",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--params", required=True,
                        help="parameter file, e.g. notebooks/params/toy.yaml")
    parser.add_argument("--only", action="append", metavar="NAME",
                        help="run only this notebook (repeatable), e.g. --only 03_alignment_ridge")
    parser.add_argument("--output-dir", default=str(DEFAULT_OUTPUT_DIR),
                        help="where executed notebooks go (default: book/run)")
    parser.add_argument("--build-book", action="store_true",
                        help="build the Jupyter Book afterwards")
    parser.add_argument("--force", action="store_true",
                        help="re-run jobs whose outputs are complete and up to date (else skipped)")
    parser.add_argument("--scheduler", default=None, metavar="local|tcp://HOST:PORT",
                        help="run the job graph on Dask: 'local' starts a LocalCluster (one "
                             "worker per GPU, else per core), an address uses a running "
                             "scheduler (e.g. a dask-jobqueue SLURMCluster); default: serial")
    check = parser.add_mutually_exclusive_group()
    check.add_argument("--check", action="store_true",
                       help="only check that the data, models, disk and memory the run needs are "
                            "there (seconds; exit status 1 on any problem)")
    check.add_argument("--no-check", action="store_true",
                       help="skip the preflight check that a run does first")
    args = parser.parse_args(argv)
    if not args.no_check:
        status = preflight(args.params, args.output_dir, args.only)
        if status or args.check:
            return status
    try:
        run_book(args.params, args.output_dir, args.only, force=args.force,
                 scheduler=args.scheduler)
    except (NotebookFailed, FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    if args.build_book:
        print(f"book: {build_book()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
