"""The book as a job graph: one papermill run per notebook, subject and sweep value.

A parameter file lists notebooks, subjects and sweeps; :func:`plan_graph` turns it into jobs with
their dependencies::

    per subject:  01_data_preparation -> 02_convergence
                                     -> 03_alignment_ridge -> 04_contrastive -> 05_captioning
                                                                              -> 06_roi_captions
    once:         00_toy_world;  07_across_subjects after every subject's 02 and 05

00 needs nothing and nothing needs it: the chapters read the toy world's files, which
:mod:`lib.run` builds before the graph starts when 00 is planned (00's own ``build`` then finds
the world up to date), so 01 runs beside 00 instead of after it.

Each sweep value (``sweeps: {03_alignment_ridge: {memory_size: [1, 3]}}``) is its own job; a
stage-2 sweep job needs the stage-1 job of the same value. Every job has a *fingerprint*: a hash
of its notebook's code, the parameters it receives, the local files those parameters name
(models, the NSD tree) and its dependencies' fingerprints. A job whose executed notebook is
complete with a matching fingerprint is skipped. :mod:`lib.run` executes the graph serially or on
Dask (:mod:`lib.cluster`).
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nbformat

from lib.config import REPO_ROOT, subject_name

#: Notebooks each notebook reads the outputs of (same subject; same sweep value where it has one).
NEEDS = {
    "00_toy_world": (),
    "01_data_preparation": (),
    "02_convergence": ("01_data_preparation",),
    "03_alignment_ridge": ("01_data_preparation",),
    "04_contrastive": ("03_alignment_ridge",),
    "05_captioning": ("03_alignment_ridge", "04_contrastive"),
    "06_roi_captions": ("05_captioning",),
    "07_across_subjects": ("02_convergence", "05_captioning"),
}

#: Notebooks run once for the whole run rather than once per subject.
ONCE = ("00_toy_world",)

#: Notebooks that read every subject's outputs (run once, after all subjects).
ACROSS_SUBJECTS = ("07_across_subjects",)

#: Parameters naming outputs, never inputs: they are left out of fingerprints.
OUTPUT_PARAMS = ("derived_root",)

#: Name of the file, next to an executed notebook, that records its fingerprint once it succeeded.
DONE_SUFFIX = ".done.json"


@dataclass
class Job:
    """One papermill run of a notebook.

    Attributes
    ----------
    name : str
        Notebook name without ``.ipynb``.
    source, output : Path
        Source notebook and executed copy.
    overrides : dict
        The sweep value of this job (``{}`` for a main run), e.g. ``{"memory_size": 3}``.
    subject : int or None
        The subject this job analyses (``None``: a job for the whole run).
    needs : list of str
        Keys of the jobs whose outputs this one reads.
    key : str
        Unique name in the graph, e.g. ``subjects/subj02/03_alignment_ridge__memory_size-3``.
    """

    name: str
    source: Path
    output: Path
    overrides: dict[str, Any] = field(default_factory=dict)
    subject: int | None = None
    needs: list[str] = field(default_factory=list)
    key: str = ""

    def __post_init__(self) -> None:
        if not self.key:
            self.key = self.output.stem

    @property
    def label(self) -> str:
        """Readable name, e.g. ``03_alignment_ridge (subj02, memory_size=3)``."""
        extra = [subject_name(self.subject)] if self.subject is not None else []
        extra += [f"{k}={v}" for k, v in self.overrides.items()]
        return f"{self.name} ({', '.join(extra)})" if extra else self.name

    def parameters(self, params: dict[str, Any]) -> dict[str, Any]:
        """The run's parameters with this job's subject and sweep value set."""
        merged = dict(params)
        if self.subject is not None:
            merged.update(subject=self.subject, subjects=[self.subject])
        merged.update(self.overrides)
        return merged


def subjects_of(params: dict[str, Any]) -> list[int]:
    """The subjects a run covers: ``subjects`` (default ``[subject]``), main subject first."""
    main = int(params.get("subject", 1))
    listed = [int(s) for s in (params.get("subjects") or [main])]
    if main not in listed:
        raise ValueError(f"subject {main} is not in subjects {listed}; list it there")
    return [main] + [s for s in listed if s != main]


def _sweep_values(name: str, params: dict[str, Any], source: Path) -> list[dict[str, Any]]:
    """Override sets of a notebook's sweep jobs (the main run, ``{}``, first)."""
    from lib.notebook_job import declared_default

    runs: list[dict[str, Any]] = [{}]
    for param, values in ((params.get("sweeps") or {}).get(name) or {}).items():
        main_value = params[param] if param in params else declared_default(source, param)
        runs += [{param: v} for v in values if v != main_value]
    return runs


def _output_path(output_dir: Path, name: str, subject: int | None, main: int,
                 sweep: dict[str, Any]) -> Path:
    stem = name + "".join(f"__{k}-{v}" for k, v in sweep.items())
    folder = (output_dir if subject in (None, main)
              else output_dir / "subjects" / subject_name(subject))
    return folder / f"{stem}.ipynb"


# size: 62 lines, of which the signature and docstring are 28 (the body, 34, walks notebooks,
# subjects and sweeps in one loop that reads as the graph it builds).
def plan_graph(
    params: dict[str, Any],
    output_dir: str | os.PathLike,
    only: list[str] | None = None,
    notebook_dir: str | os.PathLike = REPO_ROOT / "notebooks",
) -> list[Job]:
    """Turn a parameter set into jobs in a valid execution order.

    Parameters
    ----------
    params : dict
        Parsed parameter file (:func:`lib.run.load_params`): ``notebooks``, ``subjects``,
        ``subject`` (the subject the book's pages show), optional ``sweeps`` and
        ``sweep_subjects`` (``"main"``, the default, runs sweeps for the main subject only;
        ``"all"`` for every subject).
    output_dir : path-like
        Where executed notebooks go: the main subject's at the top, the others' under
        ``subjects/subjXX/``.
    only : list of str or None
        Keep only these notebooks (dependencies outside the list are taken as done).
    notebook_dir : path-like
        Folder of the source notebooks.

    Returns
    -------
    jobs : list of Job
        Topologically ordered: every job comes after the jobs it needs.
    """
    notebook_dir, output_dir = Path(notebook_dir), Path(output_dir)
    names = [str(n).removesuffix(".ipynb") for n in params["notebooks"]]
    if only:
        unknown = sorted(set(only) - set(names))
        if unknown:
            raise ValueError(f"--only {', '.join(unknown)}: not in this parameter set's "
                             f"notebooks {names}")
    subjects = subjects_of(params)
    sweep_all = str(params.get("sweep_subjects", "main")) == "all"
    jobs: list[Job] = []
    by_name: dict[str, list[Job]] = {}
    for name in names:
        source = notebook_dir / f"{name}.ipynb"
        if not source.is_file():
            raise FileNotFoundError(
                f"notebook {source} listed in the parameter file does not exist")
        once = name in ONCE or name in ACROSS_SUBJECTS
        for subject in [None] if once else subjects:
            sweeps = _sweep_values(name, params, source)
            if subject not in (None, subjects[0]) and not sweep_all:
                sweeps = sweeps[:1]
            for sweep in sweeps:
                job = Job(name, source, _output_path(output_dir, name, subject, subjects[0], sweep),
                          dict(sweep), subject)
                job.key = str(job.output.relative_to(output_dir).with_suffix(""))
                job.needs = [j.key for j in _needed(job, by_name)]
                jobs.append(job)
                by_name.setdefault(name, []).append(job)
    if only:
        kept = {j.key for j in jobs if j.name in only}
        jobs = [j for j in jobs if j.key in kept]
        for job in jobs:
            job.needs = [k for k in job.needs if k in kept]
    return jobs


def start_order(jobs: list[Job]) -> list[Job]:
    """The jobs in the order a scheduler should start them when several are ready.

    Longest chain of jobs still to come first (the job and the jobs after it, counted in
    jobs), then the plan's order: a job that holds up three chapters starts before one that
    holds up none. On the toy book's 18 jobs, replayed on two workers with the durations of
    two ``make book`` runs, this order finished as soon as longest-remaining-time-first,
    which needs the durations in advance (``bench/README.md``).

    Parameters
    ----------
    jobs : list of Job
        A graph from :func:`plan_graph` (topologically ordered).

    Returns
    -------
    ordered : list of Job
        The same jobs; a job that needs another may come before it (start only ready jobs).
    """
    after: dict[str, int] = {}
    for job in reversed(jobs):
        after[job.key] = 1 + max((after[j.key] for j in jobs if job.key in j.needs), default=0)
    index = {job.key: i for i, job in enumerate(jobs)}
    return sorted(jobs, key=lambda job: (-after[job.key], index[job.key]))


def _needed(job: Job, by_name: dict[str, list[Job]]) -> list[Job]:
    """The planned jobs that ``job`` reads the outputs of."""
    subject = job.subject
    if job.name not in NEEDS:  # a notebook of the user's: it needs every earlier main run
        return [d for jobs in by_name.values() for d in jobs
                if not d.overrides and d.subject in (subject, None)]
    found = []
    for dep_name in NEEDS[job.name]:
        candidates = by_name.get(dep_name, [])
        if job.name in ACROSS_SUBJECTS:
            found += [d for d in candidates if not d.overrides]
            continue
        same_subject = [d for d in candidates if d.subject in (subject, None)]
        same_sweep = [d for d in same_subject if d.overrides == job.overrides]
        if same_sweep and job.overrides:
            found += same_sweep  # a sweep job needs its dependency's run of the same value
        elif job.name == "05_captioning" or job.name == "06_roi_captions":
            found += same_subject  # the evaluation reads every run of the subject
        else:
            found += [d for d in same_subject if not d.overrides]
    return found


def _local_path_stamp(name: str, value: Any, cwd: Path) -> list[str]:
    """Sizes and modification times of the files a parameter value names (none if no path).

    A value counts as a path when it looks like one (a separator or a file suffix) or when the
    parameter's name says so (``*_root``, ``*_dir``): a plain word such as
    ``retrieval_rule: book`` must not stamp the folder that happens to share its name.
    """
    if not isinstance(value, str) or not value or "\n" in value:
        return []
    looks_like_path = "/" in value or os.sep in value or bool(Path(value).suffix)
    if not (looks_like_path or name.endswith(("_root", "_dir"))):
        return []
    path = Path(value) if Path(value).is_absolute() else cwd / value
    if not path.exists():
        return []
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    return [f"{p.relative_to(path.parent)}:{p.stat().st_size}:{p.stat().st_mtime_ns}"
            for p in files]


def _code_digest(source: Path) -> str:
    """Hash of a notebook's code cells (markdown edits do not invalidate results)."""
    nb = nbformat.read(source, as_version=4)
    code = "\n\n".join(c.source for c in nb.cells if c.cell_type == "code")
    return hashlib.sha256(code.encode()).hexdigest()


def _lib_digest() -> str:
    """Hash of the package's source: a code change re-runs what it may affect."""
    digest = hashlib.sha256()
    for path in sorted((REPO_ROOT / "lib").rglob("*.py")):
        digest.update(str(path.relative_to(REPO_ROOT)).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def fingerprints(jobs: list[Job], parameters: dict[str, dict[str, Any]],
                 cwd: str | os.PathLike = REPO_ROOT) -> dict[str, str]:
    """Fingerprint of every job: code, parameters, named local files and dependencies.

    Parameters
    ----------
    jobs : list of Job
        In execution order (:func:`plan_graph`).
    parameters : dict
        ``job.key -> the parameters the job's notebook receives``.
    cwd : path-like
        The notebooks' working directory: relative paths in parameters start there.

    Returns
    -------
    fingerprints : dict
        ``job.key -> sha256 hex digest``.
    """
    lib_digest = _lib_digest()
    stamps: dict[tuple[str, str], list[str]] = {}
    result: dict[str, str] = {}
    for job in jobs:
        received = parameters[job.key]
        inputs = {k: v for k, v in received.items() if k not in OUTPUT_PARAMS}
        files = {}
        for k, v in inputs.items():
            if isinstance(v, str) and (k, v) not in stamps:
                stamps[k, v] = _local_path_stamp(k, v, Path(cwd))
            files[k] = stamps.get((k, v), []) if isinstance(v, str) else []
        record = {
            "code": _code_digest(job.source),
            "lib": lib_digest,
            "parameters": inputs,
            "files": files,
            "needs": [result.get(k, "") for k in job.needs],
        }
        blob = json.dumps(record, sort_keys=True, default=str).encode()
        result[job.key] = hashlib.sha256(blob).hexdigest()
    return result


def done_record(job: Job) -> Path:
    """Path of the record that marks ``job`` complete."""
    return job.output.with_name(job.output.stem + DONE_SUFFIX)


def is_done(job: Job, fingerprint: str) -> bool:
    """Whether ``job`` ran to the end with the same fingerprint (its executed copy still there)."""
    record = done_record(job)
    if not (record.is_file() and job.output.is_file()):
        return False
    try:
        return json.loads(record.read_text()).get("fingerprint") == fingerprint
    except json.JSONDecodeError:
        return False


def mark_done(job: Job, fingerprint: str, seconds: float) -> None:
    """Record that ``job`` succeeded (written last, so a crash leaves the job not done)."""
    record = done_record(job)
    tmp = record.with_name(record.name + ".tmp")
    tmp.write_text(json.dumps({"fingerprint": fingerprint, "seconds": round(seconds, 3),
                               "job": job.key}))
    tmp.replace(record)


def clear_done(job: Job) -> None:
    """Forget that ``job`` succeeded (before it runs again)."""
    done_record(job).unlink(missing_ok=True)
