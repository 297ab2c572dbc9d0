"""Run the book's notebooks with papermill for one parameter set.

Usage::

    python -m lib.run --params notebooks/params/toy.yaml            # every notebook, in order
    python -m lib.run --params notebooks/params/toy.yaml --only 03_alignment_ridge
    python -m lib.run --params notebooks/params/micro.yaml --output-dir /tmp/run --build-book

The parameter file lists the notebooks to run (``notebooks:``) and the parameters shared by all
of them. Each notebook receives only the parameters it declares in its ``parameters`` cell, so
one file drives the whole book. An optional ``sweeps:`` mapping re-runs a notebook once per value
of one parameter, as separate papermill runs (used for the memory-size ablation)::

    sweeps:
      03_alignment_ridge: {memory_size: [1, 3, 5, 7]}

Executed notebooks land in ``book/run/`` (``<name>.ipynb``; sweep runs as
``<name>__<param>-<value>.ipynb``), where Jupyter Book picks them up. The cell papermill injects
with the parameters is tagged ``remove-cell`` so the rendered book does not show it.
"""

from __future__ import annotations

import argparse
import ast
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nbformat
import yaml

from lib.config import PARAMS_ENV, REPO_ROOT

NOTEBOOK_DIR = REPO_ROOT / "notebooks"
DEFAULT_OUTPUT_DIR = REPO_ROOT / "book" / "run"

#: Keys of a parameter file that steer lib.run itself rather than being notebook parameters.
CONTROL_KEYS = ("notebooks", "sweeps")


#: Environment of batch-executed notebooks: no progress bars, no informational model-load reports.
BATCH_ENVIRONMENT = {
    "TQDM_DISABLE": "1",
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",
    "TRANSFORMERS_VERBOSITY": "error",
    "PYTHONWARNINGS": "ignore:IProgress not found",
}


class NotebookFailed(RuntimeError):
    """A notebook raised an error; the message names the notebook, the cell and the copy."""


@dataclass
class Job:
    """One papermill run: a source notebook, its output path and its parameter overrides."""

    name: str
    source: Path
    output: Path
    overrides: dict[str, Any] = field(default_factory=dict)

    @property
    def label(self) -> str:
        extra = ", ".join(f"{k}={v}" for k, v in self.overrides.items())
        return f"{self.name} ({extra})" if extra else self.name


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


def plan_jobs(
    params: dict[str, Any],
    output_dir: str | os.PathLike = DEFAULT_OUTPUT_DIR,
    only: list[str] | None = None,
    notebook_dir: str | os.PathLike = NOTEBOOK_DIR,
) -> list[Job]:
    """List the papermill runs for a parameter set, in order.

    Parameters
    ----------
    params : dict
        Parsed parameter file (see :func:`load_params`).
    output_dir : path-like
        Where executed notebooks go.
    only : list of str or None
        Run just these notebooks (names without ``.ipynb``), with their sweeps.
    notebook_dir : path-like
        Folder of the source notebooks.

    Returns
    -------
    jobs : list of Job
    """
    notebook_dir, output_dir = Path(notebook_dir), Path(output_dir)
    names = [str(n).removesuffix(".ipynb") for n in params["notebooks"]]
    if only:
        unknown = sorted(set(only) - set(names))
        if unknown:
            raise ValueError(f"--only {', '.join(unknown)}: not in this parameter set's notebooks {names}")
        names = [n for n in names if n in only]
    sweeps = params.get("sweeps") or {}
    jobs = []
    for name in names:
        source = notebook_dir / f"{name}.ipynb"
        if not source.is_file():
            raise FileNotFoundError(f"notebook {source} listed in the parameter file does not exist")
        jobs.append(Job(name, source, output_dir / f"{name}.ipynb"))
        for param, values in (sweeps.get(name) or {}).items():
            main_value = params[param] if param in params else _declared_default(source, param)
            for value in values:
                if value == main_value:
                    continue  # the main run already covers this value
                out = output_dir / f"{name}__{param}-{value}.ipynb"
                jobs.append(Job(name, source, out, {param: value}))
    return jobs


def _declared_default(source: Path, param: str) -> Any:
    """Default value of ``param`` in a notebook's parameters cell (None if not a literal)."""
    import papermill

    declared = papermill.inspect_notebook(str(source))
    if param not in declared:
        raise ValueError(f"sweep parameter {param!r} is not declared in {source.name}'s parameters cell")
    try:
        return ast.literal_eval(declared[param]["default"])
    except (ValueError, SyntaxError):
        return None


def notebook_parameters(job: Job, params: dict[str, Any]) -> dict[str, Any]:
    """The parameters of ``params`` (plus the job's overrides) that the notebook declares."""
    import papermill

    declared = papermill.inspect_notebook(str(job.source))
    merged = {k: v for k, v in params.items() if k not in CONTROL_KEYS}
    merged.update(job.overrides)
    return {k: v for k, v in merged.items() if k in declared}


def run_job(job: Job, params: dict[str, Any], cwd: str | os.PathLike = REPO_ROOT) -> float:
    """Execute one notebook with papermill; return its wall time in seconds.

    Raises
    ------
    NotebookFailed
        When a cell raises; the message names the cell and the executed copy to open.
    """
    import papermill

    job.output.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    try:
        papermill.execute_notebook(
            str(job.source),
            str(job.output),
            parameters=notebook_parameters(job, params),
            cwd=str(cwd),
            progress_bar=False,
            log_output=False,
        )
    except papermill.PapermillExecutionError as err:
        raise NotebookFailed(
            f"notebook {job.label} failed in cell {err.cell_index} "
            f"(execution count {err.exec_count}): {err.ename}: {err.evalue}\n"
            f"  the executed copy with the full traceback: {job.output}"
        ) from None
    finally:
        if job.output.exists():
            hide_injected_parameters(job.output)
    return time.perf_counter() - start


def hide_injected_parameters(path: str | os.PathLike) -> None:
    """Tag papermill's injected-parameters cell ``remove-cell`` (and fold the defaults cell)."""
    nb = nbformat.read(path, as_version=4)
    for cell in nb.cells:
        tags = cell.setdefault("metadata", {}).setdefault("tags", [])
        if "injected-parameters" in tags and "remove-cell" not in tags:
            tags.append("remove-cell")
        elif "parameters" in tags and "hide-cell" not in tags:
            tags.append("hide-cell")
    nbformat.write(nb, path)


def _use_this_interpreter_kernel() -> None:
    """Make the ``python3`` kernel resolve to this interpreter's environment first."""
    share = Path(sys.prefix) / "share" / "jupyter"
    if (share / "kernels" / "python3").is_dir():
        paths = [str(share)] + [p for p in os.environ.get("JUPYTER_PATH", "").split(os.pathsep) if p]
        os.environ["JUPYTER_PATH"] = os.pathsep.join(paths)


def run_book(
    params_path: str | os.PathLike,
    output_dir: str | os.PathLike = DEFAULT_OUTPUT_DIR,
    only: list[str] | None = None,
    notebook_dir: str | os.PathLike = NOTEBOOK_DIR,
    cwd: str | os.PathLike = REPO_ROOT,
    log=print,
) -> dict[str, float]:
    """Run the notebooks of a parameter set in order; stop at the first failure.

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
        Receives one progress line per notebook.

    Returns
    -------
    wall_times : dict
        Seconds per executed notebook, keyed by output file name.
    """
    params = load_params(params_path)
    jobs = plan_jobs(params, output_dir, only, notebook_dir)
    _use_this_interpreter_kernel()
    # Progress bars and load reports help at the keyboard; in a batch run this function reports
    # progress per notebook, and they would fill the rendered pages (override any of these).
    for name, value in BATCH_ENVIRONMENT.items():
        os.environ.setdefault(name, value)
    os.environ.pop(PARAMS_ENV, None)  # JupyterLab's preset: the parameter file decides here
    times = {}
    total = time.perf_counter()
    for i, job in enumerate(jobs, 1):
        log(f"[{i}/{len(jobs)}] {job.label} ...")
        seconds = run_job(job, params, cwd)
        times[job.output.name] = seconds
        log(f"[{i}/{len(jobs)}] {job.label} done in {seconds:.1f} s -> {job.output}")
    log(f"{len(jobs)} notebook run(s) in {time.perf_counter() - total:.1f} s")
    return times


def build_book(source_dir: str | os.PathLike = REPO_ROOT) -> Path:
    """Build the Jupyter Book at ``source_dir``; return the path of ``index.html``."""
    exe = Path(sys.executable).with_name("jupyter-book")
    cmd = [str(exe) if exe.exists() else "jupyter-book", "build", str(source_dir), "--quiet"]
    subprocess.run(cmd, check=True)
    return Path(source_dir) / "_build" / "html" / "index.html"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lib.run", description=__doc__.split("\n")[0])
    parser.add_argument("--params", required=True, help="parameter file, e.g. notebooks/params/toy.yaml")
    parser.add_argument("--only", action="append", metavar="NAME",
                        help="run only this notebook (repeatable), e.g. --only 03_alignment_ridge")
    parser.add_argument("--output-dir", default=str(DEFAULT_OUTPUT_DIR),
                        help="where executed notebooks go (default: book/run)")
    parser.add_argument("--build-book", action="store_true", help="build the Jupyter Book afterwards")
    args = parser.parse_args(argv)
    try:
        run_book(args.params, args.output_dir, args.only)
    except (NotebookFailed, FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    if args.build_book:
        print(f"book: {build_book()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
