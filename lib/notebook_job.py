"""One notebook job through papermill: its parameters, its kernel, its executed copy.

- :func:`job_parameters`: what a job's notebook receives from a parameter file;
  :func:`declared_default`: a parameter's default in the notebook itself.
- :func:`run_job`: execute the notebook (:class:`SocketFileKernelManager` starts its kernel);
  a failing cell raises :class:`NotebookFailed` naming the cell and the executed copy.
- :func:`note_wall_time`, :func:`hide_injected_parameters`: what the executed copy shows in
  the book (its wall time and machine; papermill's injected cell hidden).

:mod:`lib.run` plans and runs the whole book with these; :mod:`lib.cluster` runs jobs on Dask.
"""

from __future__ import annotations

import ast
import os
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import nbformat
from jupyter_client.manager import AsyncKernelManager
from traitlets import default

from lib.config import REPO_ROOT
from lib.jobs import Job

#: Keys of a parameter file that steer lib.run itself rather than being notebook parameters.
CONTROL_KEYS = ("notebooks", "sweeps", "sweep_subjects")


class NotebookFailed(RuntimeError):
    """A notebook raised an error; the message names the notebook, the cell and the copy."""


def declared_default(source: Path, param: str) -> Any:
    """Default value of ``param`` in a notebook's parameters cell (None if not a literal)."""
    import papermill

    declared = papermill.inspect_notebook(str(source))
    if param not in declared:
        raise ValueError(f"sweep parameter {param!r} is not declared in {source.name}'s "
                         "parameters cell")
    try:
        return ast.literal_eval(declared[param]["default"])
    except (ValueError, SyntaxError):
        return None


def job_parameters(job: Job, params: dict[str, Any]) -> dict[str, Any]:
    """The parameters of ``params`` (plus the job's overrides) that the job's notebook
    declares (:func:`lib.config.notebook_parameters` is the interactive side)."""
    import papermill

    declared = papermill.inspect_notebook(str(job.source))
    merged = {k: v for k, v in job.parameters(params).items() if k not in CONTROL_KEYS}
    return {k: v for k, v in merged.items() if k in declared}


class SocketFileKernelManager(AsyncKernelManager):
    """The kernel manager of papermill's kernels: Unix sockets on POSIX, TCP elsewhere.

    A kernel that dies at start makes jupyter_client wait for its first reply forever
    (jupyter/jupyter_client#7); one did and hung a test run here, on a loaded machine with
    several processes starting kernels. The likely cause is TCP: jupyter_client picks five free
    ports and the kernel binds them when its interpreter has started, seconds later under load,
    and any connection opened in between can take one. A Unix socket per kernel, named uniquely
    in the temporary folder, has no such window. On Linux the sockets are in the abstract
    namespace (a name starting with ``@``): no file, so a kernel killed with its worker (as
    a Dask worker can be) leaves nothing behind.
    """

    @default("transport")
    def _default_transport(self):
        return "ipc" if os.name == "posix" else "tcp"

    @default("ip")
    def _default_ip(self):
        if self.transport != "ipc":
            return super()._ip_default()
        name = f"braincap-kernel-{uuid.uuid4().hex}"
        if sys.platform.startswith("linux"):
            return "@" + name
        return os.path.join(tempfile.gettempdir(), name)


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
            parameters=job_parameters(job, params),
            cwd=str(cwd),
            progress_bar=False,
            log_output=False,
            # the copy is written at the start, every 30 s of a long cell and at the end (also
            # after an error); rewriting it after every cell cost 0.5-2 s per notebook
            request_save_on_cell_execute=False,
            kernel_manager_class=SocketFileKernelManager,
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
    seconds = time.perf_counter() - start
    note_wall_time(job.output, seconds)
    return seconds


def machine_summary() -> str:
    """One line on the machine: CPU cores (and threads allowed), GPU if any."""
    import torch

    cores = os.cpu_count() or 1
    threads = os.environ.get("OMP_NUM_THREADS")
    text = f"{cores} CPU core{'s' if cores > 1 else ''}"
    if threads and int(threads) < cores:
        text += f" ({threads} thread{'s' if int(threads) > 1 else ''} allowed)"
    if torch.cuda.is_available():
        text += f", {torch.cuda.get_device_name(0)}"
    return text


def note_wall_time(path: str | os.PathLike, seconds: float) -> None:
    """Say under the chapter's title how long its run took and on what machine.

    The note is a markdown cell tagged ``wall-time`` (replaced, not repeated, on a re-run).
    """
    nb = nbformat.read(path, as_version=4)
    nb.cells = [c for c in nb.cells if "wall-time" not in c.get("metadata", {}).get("tags", [])]
    minutes = f"{seconds / 60:.1f} min" if seconds >= 90 else f"{seconds:.0f} s"
    note = nbformat.v4.new_markdown_cell(
        f"```{{note}}\nThis chapter ran in {minutes} ({machine_summary()}), executed by "
        f"`python -m lib.run`.\n```", metadata={"tags": ["wall-time"]})
    first = 1 if nb.cells and nb.cells[0].cell_type == "markdown" else 0
    nb.cells.insert(first, note)
    nbformat.write(nb, path)


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
