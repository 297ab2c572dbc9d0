"""The job graph (lib.jobs) and its execution (lib.cluster): planning, skipping, failures, Dask.

The execution tests use three small notebooks under the book's own names, so that the graph's
real dependencies apply: ``01_data_preparation`` writes a subject's file, ``03_alignment_ridge``
reads it (per memory size), ``04_contrastive`` reads 03's. Each fails loudly when its input is
missing, so running a job before the job it needs cannot pass.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time

import pytest
import yaml

from lib import jobs as jobgraph
from lib import run
from lib.config import REPO_ROOT
from tests.notebook_factory import write_notebook

PREP = ("import json, pathlib\n"
        "out = pathlib.Path(derived_root) / f'subj{subject}'\n"
        "out.mkdir(parents=True, exist_ok=True)\n"
        "(out / 'prep.json').write_text(json.dumps({'value': subject * 10}))")
RIDGE = ("import json, pathlib, time\n"
         "time.sleep(sleep_s)\n"
         "if subject == fail_subject:\n"
         "    raise RuntimeError('stage 1 broken on purpose')\n"
         "out = pathlib.Path(derived_root) / f'subj{subject}'\n"
         "value = json.loads((out / 'prep.json').read_text())['value'] + memory_size\n"
         "(out / f'stage1_mem{memory_size}.json').write_text(json.dumps({'value': value}))")
STAGE2 = ("import json, pathlib\n"
          "out = pathlib.Path(derived_root) / f'subj{subject}'\n"
          "value = json.loads((out / f'stage1_mem{memory_size}.json').read_text())['value'] * 2\n"
          "(out / f'stage2_mem{memory_size}.json').write_text(json.dumps({'value': value}))")


@pytest.fixture()
def project(tmp_path):
    """Three notebooks, two subjects, a memory sweep on 03 and 04; returns (params path, out)."""
    nbdir = tmp_path / "notebooks"
    write_notebook(nbdir / "01_data_preparation.ipynb",
                   "derived_root = ''\nsubject = 1\nsubjects = [1]", PREP)
    write_notebook(nbdir / "03_alignment_ridge.ipynb",
                   "derived_root = ''\nsubject = 1\nmemory_size = 1\nsleep_s = 0.0\n"
                   "fail_subject = 0",
                   RIDGE)
    write_notebook(nbdir / "04_contrastive.ipynb",
                   "derived_root = ''\nsubject = 1\nmemory_size = 1", STAGE2)
    return tmp_path, nbdir


def write_params(tmp_path, **extra):
    params = {
        "notebooks": ["01_data_preparation", "03_alignment_ridge", "04_contrastive"],
        "derived_root": str(tmp_path / "results"), "subjects": [1, 2], "subject": 1,
        "sweeps": {"03_alignment_ridge": {"memory_size": [1, 3]},
                   "04_contrastive": {"memory_size": [1, 3]}},
        "sweep_subjects": "all", **extra,
    }
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    return path


def results(tmp_path) -> dict[str, int]:
    return {str(p.relative_to(tmp_path / "results")): json.loads(p.read_text())["value"]
            for p in sorted((tmp_path / "results").rglob("*.json"))}


def test_plan_of_the_book_fans_out_subjects_and_sweeps():
    params = run.load_params(REPO_ROOT / "notebooks" / "params" / "toy.yaml")
    params.update(subjects=[1, 2], subject=1, sweep_subjects="main")
    jobs = {j.key: j for j in jobgraph.plan_graph(params, "out")}
    assert jobs["00_toy_world"].subject is None and jobs["00_toy_world"].needs == []
    # lib.run builds the toy world before the graph: the chapters start beside 00
    assert not any("00_toy_world" in job.needs for job in jobs.values())
    for prep in ("01_data_preparation", "subjects/subj02/01_data_preparation"):
        assert jobs[prep].needs == []
    assert jobs["subjects/subj02/03_alignment_ridge"].needs == [
        "subjects/subj02/01_data_preparation"]
    # sweeps run for the main subject only ("main"); a stage-2 sweep job needs its stage 1
    assert "subjects/subj02/03_alignment_ridge__memory_size-3" not in jobs
    assert jobs["04_contrastive__memory_size-3"].needs == ["03_alignment_ridge__memory_size-3"]
    assert set(jobs["05_captioning"].needs) >= {"03_alignment_ridge__memory_size-7",
                                                "04_contrastive__memory_size-3"}
    order = list(jobs)
    for key, job in jobs.items():  # topological: every job after the jobs it needs
        assert all(order.index(dep) < order.index(key) for dep in job.needs)
    with pytest.raises(ValueError, match="subject 3 is not in subjects"):
        jobgraph.plan_graph({**params, "subject": 3}, "out")


def test_start_order_puts_the_longest_chain_of_jobs_first():
    params = run.load_params(REPO_ROOT / "notebooks" / "params" / "toy.yaml")
    jobs = jobgraph.plan_graph(params, "out")
    order = [j.key for j in jobgraph.start_order(jobs)]
    assert sorted(order) == sorted(j.key for j in jobs)
    # 01 holds up 01 -> 03 -> 04 -> 05 -> 06 (5 jobs); 02 only 07 (2); 00 and 07 nothing
    assert order[:2] == ["01_data_preparation", "subjects/subj02/01_data_preparation"]
    assert order.index("03_alignment_ridge") < order.index("02_convergence")
    assert order.index("02_convergence") < order.index("00_toy_world")
    assert order[-1] == "07_across_subjects"
    same_chain = ["03_alignment_ridge__memory_size-3", "03_alignment_ridge__memory_size-5"]
    assert [k for k in order if k in same_chain] == same_chain  # ties keep the plan's order


def test_dask_starts_ready_jobs_in_start_order_within_the_free_slots():
    from distributed import Client, LocalCluster

    from lib.cluster import JobResult, _start_when_ready

    def job(key, needs=()):
        return jobgraph.Job(key, REPO_ROOT / "x.ipynb", REPO_ROOT / f"{key}.ipynb",
                            needs=list(needs), key=key)

    def work(key, seconds):
        time.sleep(seconds)
        return JobResult(key, key, "done", seconds, "")

    def run_with(slots):
        started, finished = [], []
        with LocalCluster(n_workers=1, threads_per_worker=2, processes=False,
                          dashboard_address=":0") as cluster, Client(cluster) as client:
            def submit(j):
                started.append((j.key, sorted(finished)))
                return client.submit(work, j.key, 0.2, key=j.key, pure=False)

            results = {}
            waiting = [job("c", needs=["a"]), job("b"), job("a"), job("d", needs=["outside"])]
            _start_when_ready(waiting, submit, lambda: slots, results,
                              lambda line: finished.append(line.split()[1]))
        assert sorted(results) == ["a", "b", "c", "d"]
        return started

    # one slot: the first ready job of the list each time, "c" once "a" finished; a need
    # outside the graph counts as done
    started = run_with(1)
    assert [k for k, _ in started] == ["b", "a", "c", "d"]
    assert dict(started)["c"] == ["a", "b"]
    # two slots: two jobs start before any finished, never a third
    started = run_with(2)
    assert [done for _, done in started[:2]] == [[], []] and started[2][1] != []


def test_run_builds_the_world_of_its_toy_chapter_first(monkeypatch):
    """lib.run builds (or finds up to date) the world 00_toy_world names, from the parameter
    file and, for what it leaves out, the notebook's defaults."""
    import lib.toyworld
    from lib.config import data_root

    calls = []
    monkeypatch.setattr(lib.toyworld, "build", lambda **kw: calls.append(kw) or kw["out"])
    params = run.load_params(REPO_ROOT / "notebooks" / "params" / "micro_null.yaml")
    toy_job = jobgraph.plan_graph(params, "out")[0]
    assert toy_job.name == "00_toy_world"
    run.build_toy_world(toy_job, params, log=lambda line: None)
    run.build_toy_world(toy_job, {**params, "subjects": [1, 4]}, log=lambda line: None)
    bare = {"notebooks": params["notebooks"]}  # the notebook's defaults: the toy book's world
    run.build_toy_world(toy_job, bare, log=lambda line: None)
    assert calls == [
        {"preset": "micro", "seed": 0, "out": str(data_root() / "micro_null"), "null": True,
         "n_subjects": 2},
        {"preset": "micro", "seed": 0, "out": str(data_root() / "micro_null"), "null": True,
         "n_subjects": 4},
        {"preset": "toy", "seed": 0, "out": str(data_root() / "toy"), "null": False,
         "n_subjects": 2}]


def test_serial_run_skips_up_to_date_jobs_and_reruns_what_a_change_affects(project):
    tmp_path, nbdir = project
    params = write_params(tmp_path)
    out = tmp_path / "out"
    first = run.run_book(params, out, notebook_dir=nbdir, cwd=tmp_path, log=lambda s: None)
    assert len(first) == 10  # 01 x 2 subjects, 03 and 04 x 2 subjects x 2 memory sizes
    assert results(tmp_path) == expected_results()

    lines = []
    start = time.perf_counter()
    again = run.run_book(params, out, notebook_dir=nbdir, cwd=tmp_path, log=lines.append)
    assert again == {} and "0 done, 10 skipped" in lines[-2]
    assert time.perf_counter() - start < 10

    # a changed notebook re-runs that notebook's jobs and everything downstream of them
    write_notebook(nbdir / "04_contrastive.ipynb",
                   "derived_root = ''\nsubject = 1\nmemory_size = 1",
                   STAGE2.replace("* 2", "* 3"))
    changed = run.run_book(params, out, notebook_dir=nbdir, cwd=tmp_path, log=lambda s: None)
    assert sorted(changed) == ["04_contrastive.ipynb", "04_contrastive__memory_size-3.ipynb",
                               "subjects/subj02/04_contrastive.ipynb",
                               "subjects/subj02/04_contrastive__memory_size-3.ipynb"]
    assert results(tmp_path)["subj2/stage2_mem3.json"] == (20 + 3) * 3
    forced = run.run_book(params, out, notebook_dir=nbdir, cwd=tmp_path, log=lambda s: None,
                          force=True)
    assert len(forced) == 10


def test_a_failed_job_blocks_only_the_jobs_that_need_it(project):
    tmp_path, nbdir = project
    params = write_params(tmp_path, fail_subject=2)
    lines = []
    with pytest.raises(run.NotebookFailed, match="stage 1 broken on purpose") as info:
        run.run_book(params, tmp_path / "out", notebook_dir=nbdir, cwd=tmp_path,
                     log=lines.append)
    assert str(tmp_path / "out" / "subjects" / "subj02" / "03_alignment_ridge.ipynb") in \
        str(info.value)
    table = lines[-2]
    assert "6 done, 0 skipped, 2 failed, 2 blocked" in table
    done = results(tmp_path)
    assert done["subj1/stage2_mem3.json"] == (10 + 3) * 2  # subject 1 is complete
    assert "subj2/prep.json" in done and "subj2/stage2_mem1.json" not in done


def expected_results() -> dict[str, int]:
    """What the three notebooks of ``project`` write for both subjects and memory sizes."""
    out = {}
    for subject in (1, 2):
        out[f"subj{subject}/prep.json"] = subject * 10
        for memory in (1, 3):
            out[f"subj{subject}/stage1_mem{memory}.json"] = subject * 10 + memory
            out[f"subj{subject}/stage2_mem{memory}.json"] = (subject * 10 + memory) * 2
    return out


@pytest.mark.slow
def test_dask_run_gives_every_result_and_survives_a_killed_worker(project):
    from distributed import Client, LocalCluster

    tmp_path, nbdir = project
    params = write_params(tmp_path, sleep_s=3.0)
    with LocalCluster(n_workers=2, threads_per_worker=1, dashboard_address=":0") as cluster, \
            Client(cluster) as client:
        killed, logged = [], []

        def kill_a_busy_worker():
            # Kill a worker while it runs a stage-1 job, once the runner has received both
            # preparations' results. A stage-1 job runs where its preparation's result lives;
            # killing the worker before the client gathered that result makes distributed
            # (2026.8) raise "Event ... bound to a different event loop" from
            # Future.result() in the main thread (seen once in CI): a bug of the library,
            # not the scenario this test is about.
            deadline = time.time() + 60
            while time.time() < deadline and not killed:
                prepared = sum("01_data_preparation" in line for line in logged)
                busy = [w for w, keys in client.processing().items()
                        if any("03_alignment_ridge" in str(k) for k in keys)]
                if busy and prepared == 2:
                    pid = client.run(os.getpid, workers=[busy[0]])[busy[0]]
                    os.kill(pid, signal.SIGKILL)
                    killed.append(pid)
                time.sleep(0.2)

        killer = threading.Thread(target=kill_a_busy_worker)
        killer.start()
        times = run.run_book(params, tmp_path / "dask", notebook_dir=nbdir, cwd=tmp_path,
                             log=logged.append, scheduler=cluster.scheduler_address)
        killer.join()
        assert killed, "no worker was busy with a stage-1 job to kill"
        assert len(client.scheduler_info()["workers"]) == 2  # the nanny replaced the worker
    assert len(times) == 10
    assert results(tmp_path) == expected_results()


def test_local_cpu_cluster_has_a_worker_per_core_and_3_gb_each():
    from lib.cluster import WORKER_MEMORY_BYTES, cpu_workers

    assert cpu_workers(2, None) == 2
    assert cpu_workers(2, 64 * 2**30) == 2
    assert cpu_workers(16, 10 * 2**30) == 10 * 2**30 // WORKER_MEMORY_BYTES == 3
    assert cpu_workers(4, 2**30) == 1  # too little memory for two notebooks at once
    assert cpu_workers(0, None) == 1


def test_slurm_recipe_writes_one_gpu_job_per_worker(tmp_path):
    pytest.importorskip("dask_jobqueue")
    from lib.cluster import slurm_cluster

    cluster = slurm_cluster(n_workers=0, queue="gpu", account="lab", cores=8, memory="64GB",
                            walltime="08:00:00", log_directory=str(tmp_path / "logs"),
                            job_extra_directives=["--constraint=a100"])
    try:
        script = cluster.job_script()
    finally:
        cluster.close()
    for line in ("#SBATCH -p gpu", "#SBATCH -A lab", "#SBATCH --cpus-per-task=8",
                 "#SBATCH -t 08:00:00", "#SBATCH --gres=gpu:1", "#SBATCH --constraint=a100",
                 f"#SBATCH -e {tmp_path / 'logs'}"):
        assert line in script, line
    # one notebook at a time per worker, with the job's 8 cores for its kernel
    assert "--resources GPU=1" in script and "--nthreads 1" in script
    assert "export BRAINCAP_THREADS=8" in script


@pytest.mark.slow
def test_serial_run_equals_the_distributed_micro_book(micro_run, tmp_path):
    """Preparation and stage 1 of subject 1 run one job after another in this process give the
    numbers of the micro book (``micro_run``), which ran on a Dask LocalCluster."""
    import numpy as np

    from lib.decoding.decoder import read_predictions

    params, _, _ = micro_run
    derived = tmp_path / "derived"
    path = tmp_path / "serial.yaml"
    path.write_text(yaml.safe_dump({
        **params, "notebooks": ["01_data_preparation", "03_alignment_ridge"], "sweeps": {},
        "subjects": [1], "subject": 1, "derived_root": str(derived)}))
    times = run.run_book(path, tmp_path / "run", cwd=REPO_ROOT, log=lambda s: None)
    assert len(times) == 2

    def predictions(root, subject):
        return read_predictions(root / params["dataset"] / f"subj0{subject}" / "decoding"
                                / "stage1")

    book_root = REPO_ROOT / params["derived_root"]
    serial, dask = predictions(derived, 1), predictions(book_root, 1)
    np.testing.assert_array_equal(serial["test_ids"], dask["test_ids"])
    np.testing.assert_allclose(serial["test_pred"], dask["test_pred"], rtol=1e-4, atol=1e-5)
    # the two subjects are different brains: their predictions differ
    assert not np.allclose(dask["test_pred"], predictions(book_root, 2)["test_pred"])


def test_only_path_parameters_stamp_files(tmp_path):
    # `retrieval_rule: book` once stamped the repository's book/ folder, whose executed notebooks
    # change with every run, so a second call re-ran chapter 05 and everything after it
    (tmp_path / "book").mkdir()
    (tmp_path / "book" / "page.md").write_text("x")
    assert jobgraph._local_path_stamp("retrieval_rule", "book", tmp_path) == []
    assert jobgraph._local_path_stamp("nsd_root", "book", tmp_path)  # named as a folder
    assert jobgraph._local_path_stamp("zoo", "book/page.md", tmp_path)  # looks like a path
    assert jobgraph._local_path_stamp("zoo", "book/missing.json", tmp_path) == []
