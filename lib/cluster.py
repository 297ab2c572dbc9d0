"""Execute the job graph of :mod:`lib.jobs`: serially, or on Dask (local machine, SLURM, any
cluster).

On Dask, a job is submitted when the jobs it needs have finished and a worker is free (the ready
jobs in :func:`lib.jobs.start_order`); GPUs are worker *resources*, a lost worker's job is re-run
elsewhere (the scheduler's ``allowed-failures``), and each job's status comes back as a
:class:`JobResult`. A failed job marks the jobs that need it ``blocked``; independent jobs
run to the end. Three ways to run::

    python -m lib.run --params P                          # serial, in this process (default)
    python -m lib.run --params P --scheduler local        # LocalCluster: a worker per GPU or core
                                                          # (make book uses it)
    python -m lib.run --params P --scheduler slurm        # dask-jobqueue SLURMCluster (``slurm:``)
    python -m lib.run --params P --scheduler tcp://host:8786   # a scheduler you started
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lib.config import PARAMS_ENV, set_thread_variables
from lib.jobs import Job, clear_done, fingerprints, is_done, mark_done, start_order

#: Threads a notebook may use on a Dask worker (Dask's nanny sets OMP_NUM_THREADS=1 in workers).
THREADS_ENV = "BRAINCAP_THREADS"


@dataclass
class JobResult:
    """What happened to one job: ``done``, ``skipped`` (up to date), ``failed`` or ``blocked``."""

    key: str
    label: str
    status: str
    seconds: float
    output: str
    message: str = ""


def parameters_by_job(jobs: list[Job], params: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The parameters each job's notebook receives, keyed by job."""
    from lib.notebook_job import job_parameters

    return {job.key: job_parameters(job, params) for job in jobs}


def execute(job: Job, params: dict[str, Any], cwd: str, fingerprint: str, force: bool,
            *needed: JobResult) -> JobResult:
    """Run one job unless it is up to date or a job it needs did not succeed.

    Parameters
    ----------
    job : Job
    params : dict
        The run's parameters.
    cwd : str
        Working directory of the notebook.
    fingerprint : str
        The job's fingerprint (:func:`lib.jobs.fingerprints`).
    force : bool
        Run even when the outputs are complete with this fingerprint.
    *needed : JobResult
        Results of the jobs it needs (Dask passes them once they are available).

    Returns
    -------
    result : JobResult
    """
    from lib.notebook_job import NotebookFailed, run_job

    broken = [r.label for r in needed if r.status in ("failed", "blocked")]
    if broken:
        return JobResult(job.key, job.label, "blocked", 0.0, str(job.output),
                         f"not run: needs {', '.join(broken)}")
    if not force and is_done(job, fingerprint):
        return JobResult(job.key, job.label, "skipped", 0.0, str(job.output), "up to date")
    clear_done(job)
    os.environ.pop(PARAMS_ENV, None)  # a worker started from JupyterLab: the parameter file decides
    threads = os.environ.get(THREADS_ENV)
    if threads:  # the notebook's kernel inherits this process's environment
        set_thread_variables(threads)
    try:
        seconds = run_job(job, params, cwd)
    except NotebookFailed as err:
        return JobResult(job.key, job.label, "failed", 0.0, str(job.output), str(err))
    mark_done(job, fingerprint, seconds)
    return JobResult(job.key, job.label, "done", seconds, str(job.output))


def run_serial(jobs: list[Job], params: dict[str, Any], cwd, *, force: bool = False,
               log=print) -> list[JobResult]:
    """Run the jobs one after another in this process (the default of ``make book``)."""
    prints = fingerprints(jobs, parameters_by_job(jobs, params), cwd)
    results: dict[str, JobResult] = {}
    for i, job in enumerate(jobs, 1):
        log(f"[{i}/{len(jobs)}] {job.label} ...")
        result = execute(job, params, str(cwd), prints[job.key], force,
                         *(results[k] for k in job.needs if k in results))
        results[job.key] = result
        log(f"[{i}/{len(jobs)}] {_line(result)}")
    return list(results.values())


def _line(result: JobResult) -> str:
    if result.status == "done":
        return f"{result.label} done in {result.seconds:.1f} s -> {result.output}"
    return f"{result.label} {result.status}: {result.message.splitlines()[0]}"


def run_dask(jobs: list[Job], params: dict[str, Any], cwd, scheduler: str, *,
             force: bool = False, log=print) -> list[JobResult]:
    """Run the jobs on Dask: ``"local"``, ``"slurm"`` or a scheduler address.

    A job is submitted when the jobs it needs have finished and a worker thread is free, the
    ready jobs in :func:`lib.jobs.start_order`; each receives the results of the jobs it needs.
    Submitting every job at once, with its dependencies as futures, let Dask start the jobs in
    its own order (the dependants of a finished job queue on its worker): two workers were busy
    83-92% of a toy ``make book``'s notebook time, and 99% in this order (``bench/README.md``).
    Jobs ask for one ``GPU`` resource when the workers advertise GPUs.
    """
    from distributed import Client

    cluster = None
    if scheduler == "local":
        cluster = local_cluster()
    elif scheduler == "slurm":
        cluster = slurm_cluster(**(params.get("slurm") or {}))
    client = Client(cluster if cluster is not None else scheduler)
    try:
        log(f"Dask scheduler {client.scheduler.address}, dashboard {client.dashboard_link}")
        prints = fingerprints(jobs, parameters_by_job(jobs, params), cwd)
        resources = {"GPU": 1} if _workers_have_gpus(client) else None
        results: dict[str, JobResult] = {}

        def submit(job: Job):
            return client.submit(execute, job, params, str(cwd), prints[job.key], force,
                                 *(results[k] for k in job.needs if k in results),
                                 key=f"job-{job.key}", pure=False, resources=resources)

        _start_when_ready(start_order(jobs), submit, lambda: _job_slots(client), results, log)
        return [results[job.key] for job in jobs]
    finally:
        client.close()
        if cluster is not None:
            cluster.close()


def _start_when_ready(waiting: list[Job], submit, slots, results: dict, log):
    """Submit each waiting job once its needs are in ``results`` and ``slots()`` has room for
    it; collect every result into ``results`` (a list scheduler over Dask futures)."""
    from distributed import wait

    planned = {job.key for job in waiting}
    n_jobs = len(planned)
    running: dict = {}
    while waiting or running:
        room = slots() - len(running)
        for job in [j for j in waiting if all(k in results or k not in planned for k in j.needs)]:
            if room <= 0:
                break
            waiting.remove(job)
            running[submit(job)] = job
            room -= 1
        if not running:
            raise RuntimeError("jobs wait on jobs that never ran: "
                               + ", ".join(j.key for j in waiting))
        try:  # wake up now and then: workers may join (a SLURM job leaving the queue)
            finished = wait(list(running), timeout=10, return_when="FIRST_COMPLETED").done
        except TimeoutError:
            continue
        for future in finished:
            running.pop(future)
            result = future.result()
            results[result.key] = result
            log(f"[{len(results)}/{n_jobs}] {_line(result)}")


def _job_slots(client) -> int:
    """Jobs that can run at once: the workers' threads (one notebook each), at least 1 (so that
    an adaptive cluster sees work to scale up for)."""
    return max(1, sum(client.nthreads().values()))


def _workers_have_gpus(client) -> bool:
    workers = client.scheduler_info()["workers"].values()
    return any(w.get("resources", {}).get("GPU") for w in workers)


def local_cluster(n_workers: int | None = None):
    """A Dask cluster on this machine: one worker per GPU (each sees only its GPU), else per core.

    On a CPU-only machine each worker runs one notebook at a time on ``cores // n_workers``
    threads (:func:`cpu_workers`): on 2 cores the two subjects' chapters run side by side,
    one thread each, which finishes the toy book's notebooks about a quarter sooner than one
    notebook after the other on two threads (``book/course.md``, *How long it takes*).

    Parameters
    ----------
    n_workers : int or None
        Number of workers on a CPU-only machine (default: :func:`cpu_workers`).

    Returns
    -------
    cluster : distributed.SpecCluster or distributed.LocalCluster
    """
    from distributed import LocalCluster, Nanny, Scheduler, SpecCluster

    cores = os.cpu_count() or 1
    n_gpus = _cuda_device_count()
    if n_gpus:
        workers = {
            f"gpu{i}": {"cls": Nanny, "options": {
                "nthreads": 1, "resources": {"GPU": 1},
                "env": {"CUDA_VISIBLE_DEVICES": str(i), THREADS_ENV: str(max(1, cores // n_gpus))}}}
            for i in range(n_gpus)
        }
        return SpecCluster(workers=workers, scheduler={"cls": Scheduler, "options": {
            "dashboard_address": ":0"}})
    from lib.resources import host_memory

    n = n_workers or cpu_workers(cores, host_memory()["available"])
    return LocalCluster(n_workers=n, threads_per_worker=1, processes=True,
                        dashboard_address=":0", env={THREADS_ENV: str(max(1, cores // n))})


#: Memory set aside per CPU worker, whose kernel runs one notebook at a time (the toy book's
#: kernels peaked at 1.1 GB, all of them together at 1.9 GB, in a 2-worker make book).
WORKER_MEMORY_BYTES = 3 * 2**30


def cpu_workers(cores: int, available_bytes: int | None) -> int:
    """Workers of a CPU-only LocalCluster: one per core, at most one per 3 GB of free memory.

    Parameters
    ----------
    cores : int
        CPU cores of the machine.
    available_bytes : int or None
        Memory available now; None when unknown (no cap).

    Returns
    -------
    n_workers : int
        At least 1.
    """
    n = max(1, int(cores))
    if available_bytes is not None:
        n = min(n, max(1, int(available_bytes) // WORKER_MEMORY_BYTES))
    return n


def _cuda_device_count() -> int:
    try:
        import torch
    except ImportError:
        return 0
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


# size: 9 parameters, each an #SBATCH setting of dask-jobqueue's SLURMCluster (with its names).
def slurm_cluster(n_workers: int = 1, queue: str | None = None, account: str | None = None,
                  cores: int = 8, memory: str = "64GB", walltime: str = "08:00:00",
                  gpus_per_worker: int = 1, log_directory: str = "logs/dask",
                  job_extra_directives: list[str] | None = None, **options):
    """A dask-jobqueue SLURMCluster with one GPU job per worker, scaled to ``n_workers``.

    Parameters
    ----------
    n_workers : int
        SLURM jobs to submit (one Dask worker, one GPU each).
    queue, account : str or None
        ``--partition`` and ``--account`` of the jobs.
    cores, memory, walltime : int, str, str
        CPU cores, host memory and time limit of each job (e.g. ``"64GB"``, ``"08:00:00"``).
    gpus_per_worker : int
        GPUs requested per job (``--gres=gpu:N``); each worker advertises one ``GPU`` resource.
    log_directory : str
        Where SLURM writes each job's stdout/stderr (on shared storage).
    job_extra_directives : list of str or None
        Further ``#SBATCH`` lines, e.g. ``["--constraint=a100"]``.
    **options
        Passed on to :class:`dask_jobqueue.SLURMCluster` (e.g. ``job_script_prologue``).

    Returns
    -------
    cluster : dask_jobqueue.SLURMCluster
    """
    from dask_jobqueue import SLURMCluster

    extra = [f"--gres=gpu:{gpus_per_worker}"] if gpus_per_worker else []
    Path(log_directory).mkdir(parents=True, exist_ok=True)
    # One Dask thread runs one notebook at a time; the job books `cores` CPUs for that notebook
    # (its kernel reads BRAINCAP_THREADS, see `execute`).
    prologue = [f"export {THREADS_ENV}={cores}", *options.pop("job_script_prologue", [])]
    cluster = SLURMCluster(
        queue=queue, account=account, cores=1, job_cpu=cores, processes=1, memory=memory,
        walltime=walltime, log_directory=log_directory, job_script_prologue=prologue,
        job_extra_directives=extra + list(job_extra_directives or []),
        worker_extra_args=["--resources", "GPU=1"] if gpus_per_worker else [],
        **options,
    )
    cluster.scale(jobs=n_workers)
    return cluster


def summary_table(results: list[JobResult]) -> str:
    """Plain-text table of the jobs: status, time and the executed copy of each failure."""
    counts = {s: sum(r.status == s for r in results) for s in ("done", "skipped", "failed",
                                                               "blocked")}
    width = max((len(r.label) for r in results), default=10)
    lines = [f"{'job':<{width}}  status    seconds  notebook"]
    for r in results:
        where = r.output if r.status in ("done", "failed") else ""
        lines.append(f"{r.label:<{width}}  {r.status:<8}  {r.seconds:7.1f}  {where}")
    lines.append(", ".join(f"{n} {s}" for s, n in counts.items()))
    return "\n".join(lines)
