"""lib.run: planning papermill runs, passing parameters, reporting failures."""

from __future__ import annotations

import json

import nbformat
import pytest
import yaml

from lib import run
from lib.jobs import plan_graph
from tests.notebook_factory import write_notebook


@pytest.fixture()
def project(tmp_path):
    """Two notebooks and a parameter file with a sweep, in a temporary folder."""
    nbdir = tmp_path / "notebooks"
    write_notebook(
        nbdir / "01_first.ipynb",
        "alpha = 1\nname = 'default'",
        "import json, pathlib\n"
        "pathlib.Path(f'out_{name}_{alpha}.json')"
        ".write_text(json.dumps({'alpha': alpha, 'name': name}))",
    )
    write_notebook(nbdir / "02_second.ipynb", "name = 'default'\nflag = False",
                   "result = name.upper()",
                   "from tqdm.auto import tqdm\nfor _ in tqdm(range(3), desc='bar'):\n    pass")
    params = {
        "notebooks": ["01_first", "02_second"],
        "alpha": 3,
        "name": "toy",
        "unused": 42,
        "sweeps": {"01_first": {"alpha": [3, 5]}, "02_second": {"flag": [True, False]}},
    }
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    return tmp_path, nbdir, path


def test_plan_orders_notebooks_and_sweeps(project):
    tmp, nbdir, params_path = project
    params = run.load_params(params_path)
    jobs = plan_graph(params, tmp / "out", notebook_dir=nbdir)
    assert [j.output.name for j in jobs] == [
        "01_first.ipynb",
        "01_first__alpha-5.ipynb",  # alpha=3 is the main run's own value: not repeated
        "02_second.ipynb",
        "02_second__flag-True.ipynb",  # flag=False is the notebook's own default: not repeated
    ]
    assert jobs[1].overrides == {"alpha": 5}
    assert jobs[2].needs == ["01_first"]  # a notebook of the user's needs the earlier main runs
    only = plan_graph(params, tmp / "out", only=["02_second"], notebook_dir=nbdir)
    assert [j.output.name for j in only] == ["02_second.ipynb", "02_second__flag-True.ipynb"]


def test_plan_rejects_unknown_and_missing_notebooks(project, tmp_path):
    tmp, nbdir, params_path = project
    params = run.load_params(params_path)
    with pytest.raises(ValueError, match="--only 03_nope"):
        plan_graph(params, tmp / "out", only=["03_nope"], notebook_dir=nbdir)
    with pytest.raises(FileNotFoundError, match="99_missing"):
        plan_graph({"notebooks": ["99_missing"]}, tmp / "out", notebook_dir=nbdir)
    bad = tmp_path / "bad.yaml"
    bad.write_text("alpha: 1\n")
    with pytest.raises(ValueError, match="notebooks"):
        run.load_params(bad)


def test_run_book_passes_declared_parameters_and_hides_injected_cell(project):
    tmp, nbdir, params_path = project
    lines = []
    times = run.run_book(params_path, tmp / "out", notebook_dir=nbdir, cwd=tmp, log=lines.append)
    assert set(times) == {"01_first.ipynb", "01_first__alpha-5.ipynb", "02_second.ipynb",
                          "02_second__flag-True.ipynb"}
    assert json.loads((tmp / "out_toy_3.json").read_text()) == {"alpha": 3, "name": "toy"}
    assert json.loads((tmp / "out_toy_5.json").read_text()) == {"alpha": 5, "name": "toy"}
    assert any("done in" in line for line in lines) and "4 job(s)" in lines[-1]
    assert "4 done, 0 skipped, 0 failed, 0 blocked" in lines[-2]

    nb = nbformat.read(tmp / "out" / "01_first.ipynb", as_version=4)
    # the chapter says, under its title, how long it ran
    assert "wall-time" in nb.cells[1].metadata.tags and "This chapter ran in" in nb.cells[1].source
    injected = [c for c in nb.cells if "injected-parameters" in c.metadata.get("tags", [])]
    assert len(injected) == 1 and "remove-cell" in injected[0].metadata.tags
    # only declared parameters are injected: `unused` and the control keys are not
    assert "unused" not in injected[0].source and "sweeps" not in injected[0].source
    # batch runs keep progress bars out of the pages
    second = nbformat.read(tmp / "out" / "02_second.ipynb", as_version=4)
    assert "bar:" not in json.dumps([c.get("outputs", []) for c in second.cells])


def test_failure_names_notebook_cell_and_copy(tmp_path):
    nbdir = tmp_path / "notebooks"
    write_notebook(nbdir / "01_bad.ipynb", "x = 1", "y = x + 1",
                   "raise ValueError('broken on purpose')")
    params_path = tmp_path / "p.yaml"
    params_path.write_text(yaml.safe_dump({"notebooks": ["01_bad"], "x": 2}))
    with pytest.raises(run.NotebookFailed) as info:
        run.run_book(params_path, tmp_path / "out", notebook_dir=nbdir, cwd=tmp_path,
                     log=lambda s: None)
    message = str(info.value)
    assert "01_bad" in message and "ValueError: broken on purpose" in message
    assert str(tmp_path / "out" / "01_bad.ipynb") in message
    assert (tmp_path / "out" / "01_bad.ipynb").exists()


def test_cli_exit_code_on_failure(tmp_path, capsys):
    assert run.main(["--params", str(tmp_path / "absent.yaml")]) == 1
    assert "not found" in capsys.readouterr().err



def test_once_runs_the_work_once_and_shares_its_result(tmp_path_factory):
    # the micro books are made by whichever pytest-xdist process needs them first; a second
    # call (another process, or this one) must wait and reuse, not run the book again
    from tests.conftest import once

    calls = []

    def make(folder):
        calls.append(folder)
        (folder / "out.txt").write_text("made")
        return {"seconds": 1.5}

    first = once(tmp_path_factory, "once-probe", make)
    second = once(tmp_path_factory, "once-probe", make)
    assert len(calls) == 1 and first == second
    assert (first[0] / "out.txt").read_text() == "made" and first[1] == {"seconds": 1.5}


@pytest.mark.timeout(120)  # without the other work the lock is never released: fail, not hang
def test_once_does_other_work_while_another_process_makes_it(tmp_path_factory):
    # a second process that finds the micro book being made runs the null book meanwhile
    from filelock import FileLock

    from tests.conftest import once, session_dir

    # another process, making it
    other = FileLock(str(session_dir(tmp_path_factory) / "once-busy-probe.lock"))
    other.acquire()
    meanwhile = []

    def other_work():
        meanwhile.append("null book")
        other.release()  # the other process finishes

    _, result = once(tmp_path_factory, "once-busy-probe", lambda folder: 7,
                     while_busy=other_work)
    assert meanwhile == ["null book"] and result == 7



KERNEL_THEN_WAIT = """
import asyncio, sys, time
from lib.notebook_job import SocketFileKernelManager

async def main():
    km = SocketFileKernelManager(kernel_name="python3")
    await km.start_kernel()
    client = km.client()
    client.start_channels()
    await client.wait_for_ready(timeout=60)
    print(km.transport, km.ip, km.provisioner.pid, flush=True)
    time.sleep(600)

asyncio.run(main())
"""


def test_a_killed_run_leaves_no_kernel_socket_files(tmp_path):
    """A process running a kernel killed with it (a Dask worker killed mid-job, say) leaves
    no socket files behind: on Linux the kernel's sockets are abstract (no file)."""
    import os
    import signal
    import subprocess
    import sys
    import tempfile

    proc = subprocess.Popen([sys.executable, "-c", KERNEL_THEN_WAIT], stdout=subprocess.PIPE,
                            text=True, cwd=run.REPO_ROOT)
    try:
        transport, ip, kernel_pid = proc.stdout.readline().split()
    finally:
        proc.kill()
        proc.wait()
    os.kill(int(kernel_pid), signal.SIGKILL)
    assert transport == "ipc"
    name = os.path.basename(ip.lstrip("@"))
    left = [f for d in (tempfile.gettempdir(), tmp_path, run.REPO_ROOT) for f in os.listdir(d)
            if name in f]
    if sys.platform.startswith("linux"):
        assert ip.startswith("@") and not left
