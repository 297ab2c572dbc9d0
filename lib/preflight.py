"""Preflight: check, in seconds and before hours of GPU work, that a run has what it needs.

``python -m lib.run --params P --check`` runs only this; a normal ``lib.run`` runs it first
(``--no-check`` skips it). It inspects, without loading betas or weights:

- every NSD file each listed subject and session needs (the file list of
  :meth:`lib.nsd.NSDLayout.keys`, the one ``python -m lib.nsd download`` fetches), the COCO
  captions, the ROI files, the category vocabulary and the MNI transform when set;
- every model of the parameters (``blip2_model``, ``itm_model``, the zoos): a local folder or
  the Hugging Face hub cache (:func:`lib.features.sources.locate_model`, no network), and which
  need a hub login (``gated: true``);
- free disk against the size of the outputs, and the peak GPU and host memory of each stage
  from the data's real shapes (:mod:`lib.resources`; stages 1 and 2 from
  :func:`lib.decoding.memory.memory_table` when that module exists) against what the machine has.

Every problem is one :class:`Problem` naming what is missing and the command that fixes it; all
are reported at once.

Size: over the ~400-line aim (about 450): one check per kind of input (files, models, disk,
memory) beside the message it prints; the memory accounting itself is in
:mod:`lib.decoding.memory` and :mod:`lib.resources`.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass, field
from pathlib import Path

from lib.config import subject_name
from lib.nsd.download import format_size
from lib.nsd.layout import EXPDESIGN, MNI_TRANSFORM, STIM_INFO, STIMULI, NSDLayout

_GIB = 2**30
_DECODING = ("03_alignment_ridge", "04_contrastive", "05_captioning", "06_roi_captions")


@dataclass
class Problem:
    """One thing a run lacks: ``section`` (data, captions, models, disk, memory, device),
    the ``message`` and the ``fix`` (a command or an edit; may be empty)."""

    section: str
    message: str
    fix: str = ""

    def __str__(self) -> str:
        return f"[{self.section}] {self.message}" + (f"\n    fix: {self.fix}" if self.fix else "")


@dataclass
class PreflightReport:
    """What :func:`run_preflight` found: problems, notes, the memory table, the machine."""

    problems: list[Problem] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    memory: object = None  # pandas.DataFrame of peaks, or None when not estimated
    memory_rows: list = field(default_factory=list)  # the components behind the peaks
    disk: list = field(default_factory=list)
    machine: dict = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.problems


def _sessions(params: dict):
    value = params.get("sessions")
    if value is None:
        return None
    if isinstance(value, str):
        from lib.nsd.download import parse_sessions

        return parse_sessions(value)
    return sorted(int(s) for s in value)


def _default() -> list[int]:
    """The download command's default sessions."""
    from lib.nsd.download import DEFAULT_SESSIONS, parse_sessions

    return parse_sessions(DEFAULT_SESSIONS)


def _session_text(sessions) -> str:
    """``[1, 2, 3, 7]`` -> ``"1-3,7"`` (what ``--sessions`` reads)."""
    parts, run = [], []
    for s in sorted(sessions):
        if run and s != run[-1] + 1:
            parts.append(f"{run[0]}-{run[-1]}" if len(run) > 1 else str(run[0]))
            run = []
        run.append(s)
    if run:
        parts.append(f"{run[0]}-{run[-1]}" if len(run) > 1 else str(run[0]))
    return ",".join(parts)


def download_command(root, subject=None, sessions=None, coco_only: bool = False) -> str:
    """The exact ``python -m lib.nsd download`` command that fetches what is missing."""
    if coco_only:
        return f"python -m lib.nsd download --coco-only --dest {root}"
    return (f"python -m lib.nsd download --subject {int(subject)} --sessions "
            f"{_session_text(sessions or [1])} --dest {root} --no-coco")


def _built_by_toy_world(path, params: dict, planned) -> bool:
    """Whether ``path`` will be written earlier in this run: :mod:`lib.run` builds the toy world
    first when 00_toy_world is planned and the world is not built yet (no ``BUILD.json`` in
    ``toy_root``)."""
    if "00_toy_world" not in planned or not params.get("toy_root"):
        return False
    toy = Path(params["toy_root"]).resolve()
    return not (toy / "BUILD.json").is_file() and Path(path).resolve().is_relative_to(toy)


def check_nsd_files(params: dict) -> tuple[list[Problem], list[str]]:
    """Every NSD file the listed subjects and sessions need, and the COCO captions.

    Returns
    -------
    problems, notes : list of Problem, list of str
    """
    root = Path(params["nsd_root"])
    layout = NSDLayout(root)
    problems, notes = [], []
    if not root.is_dir():
        cmd = download_command(root, _subjects(params)[0], _sessions(params) or _default())
        return [Problem("data", f"nsd_root {root} does not exist",
                        f"set nsd_root in the parameter file, or `{cmd.replace(' --no-coco', '')}`"
                        )], notes
    listed = _sessions(params)
    shared_reported = set()
    for subject in _subjects(params):
        sessions = listed or layout.sessions_present(subject)
        if not sessions:
            sessions = _default()
            problems.append(Problem(
                "data", f"{subject_name(subject)}: no betas session found in "
                f"{layout.betas_dir(subject)}", f"`{download_command(root, subject, sessions)}`"))
        elif listed is None:
            notes.append(f"{subject_name(subject)}: using the {len(sessions)} session(s) present "
                         f"({_session_text(sessions)}); set `sessions:` to require more")
        missing_betas = [s for s in sessions if not layout.betas(subject, s).is_file()]
        if missing_betas and layout.sessions_present(subject):
            example = layout.betas(subject, missing_betas[0])
            problems.append(Problem(
                "data", f"{subject_name(subject)}: betas of session(s) "
                f"{_session_text(missing_betas)} missing (e.g. {example})",
                f"`{download_command(root, subject, missing_betas)}`, or list only the sessions "
                "you have in `sessions:`"))
        for key in NSDLayout.keys(subject, sessions, stimuli=True):
            if "betas_session" in key or key == MNI_TRANSFORM.format(subj=subject_name(subject)):
                continue  # betas: above; the MNI transform: only when mni_transform names it
            shared = key in (EXPDESIGN, STIM_INFO, STIMULI)
            if (root / key).is_file() or (shared and key in shared_reported):
                continue
            shared_reported.add(key)
            what = "ROI file" if "/roi/" in key else "file"
            problems.append(Problem("data", f"NSD {what} missing: {root / key}",
                                    f"`{download_command(root, subject, sessions)}` "
                                    "(complete files are skipped)"))
    problems += check_captions(root)
    return problems, notes


def check_captions(root) -> list[Problem]:
    """Both COCO caption files under ``<nsd_root>/annotations``."""
    from lib.nsd.layout import COCO_CAPTION_FILES

    folder = NSDLayout(root).annotations
    absent = [str(folder / f) for f in COCO_CAPTION_FILES if not (folder / f).is_file()]
    if not absent:
        return []
    return [Problem("captions", f"COCO caption annotations missing: {', '.join(absent)}",
                    f"`{download_command(root, coco_only=True)}`")]


def check_other_inputs(params: dict, planned) -> list[Problem]:
    """Files named by parameters: ``mni_transform`` and 06's ``category_lexicon``."""
    problems = []
    mni = params.get("mni_transform")
    if mni and not Path(mni).is_file() and not _built_by_toy_world(mni, params, planned):
        cmd = download_command(params["nsd_root"], params.get("subject", 1), _sessions(params))
        problems.append(Problem("data", f"mni_transform {mni} not found",
                                f"`{cmd}` (it fetches subjXX/transforms/func1pt8-to-MNI.nii.gz), "
                                "or set mni_transform: null"))
    lexicon = params.get("category_lexicon")
    if ("06_roi_captions" in planned and lexicon and not Path(lexicon).is_file()
            and not _built_by_toy_world(lexicon, params, planned)):
        problems.append(Problem("data", f"category_lexicon {lexicon} not found",
                                f"`python -m lib.nsd download --coco-only --coco-instances --dest "
                                f"{params['nsd_root']}` then `python -m lib.nsd lexicon --nsd-root "
                                f"{params['nsd_root']} --out {lexicon}`"))
    return problems


def _subjects(params: dict) -> list[int]:
    subjects = [int(s) for s in (params.get("subjects") or [])]
    if params.get("subject") is not None and int(params["subject"]) not in subjects:
        subjects.append(int(params["subject"]))
    return subjects or [1]


def model_entries(params: dict, planned) -> list[dict]:
    """The models a run loads: ``{"key", "name", "path", "modality", "gated"}`` each."""
    from lib.encoding import load_zoo

    entries = []
    for key in ("blip2_model", "itm_model"):
        if params.get(key) and any(n in planned for n in _DECODING + ("00_toy_world",)):
            entries.append({"key": key, "name": key, "path": str(params[key]),
                            "modality": "blip2", "gated": False})
    if "02_convergence" in planned:
        chosen = params.get("convergence_models")
        for modality in ("vision", "language"):
            zoo = params.get(f"{modality}_zoo")
            if isinstance(zoo, (str, Path)):
                zoo = [zoo]
            zoo = [z for z in zoo or [] if not (isinstance(z, (str, Path))
                                               and _built_by_toy_world(z, params, planned))]
            for e in load_zoo(zoo, modality=modality):
                if chosen is None or e["name"] in set(chosen):
                    entries.append({**e, "key": f"{modality}_zoo"})
    return entries


def check_models(entries: list[dict], params: dict, planned,
                 cache_dir=None) -> tuple[list[Problem], list[str], dict]:
    """Each model resolves offline (local folder or hub cache); gated ones need a login.

    Returns
    -------
    problems, notes : list
    located : dict
        Model name -> :class:`lib.features.sources.ModelLocation` of the usable ones.
    """
    from lib.features.sources import (
        gated_hint,
        hub_token_configured,
        is_hub_id,
        locate_model,
    )

    problems, notes, located = [], [], {}
    token = hub_token_configured()
    for e in entries:
        where = locate_model(e["path"], cache_dir=cache_dir)
        if where.ok:
            located[e["name"]] = where
            continue
        if _built_by_toy_world(e["path"], params, planned):
            continue
        if e.get("gated") and not token:
            notes.append(f"{e['name']} ({e['path']}) needs a hub login and none is configured: "
                         f"02 skips it ({gated_hint(e['path'])})")
            continue
        if e.get("optional"):
            notes.append(f"{e['name']} (optional): {where.problem}; 02 lists it in "
                         "failed_models.csv and goes on")
            continue
        fix = (f"`hf download {e['path']}`" + (" after accepting its licence and `hf auth "
                                                "login`" if e.get("gated") else "")
               if is_hub_id(e["path"]) else f"fix {e['key']} in the parameter file")
        problems.append(Problem("models", f"{e['name']}: {where.problem}", fix))
    return problems, notes, located


def estimate_memory(params: dict, shapes: dict, entries: list[dict], located: dict,
                    cuda: bool) -> tuple[list[dict], list[str]]:
    """Memory rows of every stage from the data's shapes (see :mod:`lib.resources`).

    Returns
    -------
    rows : list of dict
        :data:`lib.resources.MEMORY_COLUMNS`.
    notes : list of str
        What could not be estimated, and why.
    """
    from lib.resources import convergence_memory, model_shape, preparation_memory

    rows, notes = preparation_memory(shapes, params.get("prep_dtype") or "float32"), []
    for e in entries:
        if e["modality"] not in ("vision", "language") or e["name"] not in located:
            continue
        try:
            shape = model_shape(located[e["name"]].path, e["modality"])
        except Exception as err:  # noqa: BLE001 - an unreadable config is reported, not fatal
            notes.append(f"{e['name']}: memory not estimated ({type(err).__name__}: {err})")
            continue
        rows += convergence_memory(shapes, {**shape, "name": e["name"],
                                            "modality": e["modality"]}, params, cuda)
    if importlib.util.find_spec("lib.decoding.memory") is None:
        notes.append("stage 1 and stage 2 memory: not estimated (lib.decoding.memory is not "
                     "available)")
    else:
        from lib.decoding.memory import memory_table

        keys = ("n_voxels", "n_train_trials", "n_train_images", "n_test_images")
        try:
            rows += memory_table(params, {k: shapes[k] for k in keys}).to_dict("records")
        except Exception as err:  # noqa: BLE001 - the other stages' estimates still stand
            notes.append(f"stage 1 and stage 2 memory: not estimated ({type(err).__name__}: "
                         f"{err})")
    return rows, notes


def compare_memory(peaks, machine: dict, cuda: bool) -> tuple[list[Problem], list[str]]:
    """Each stage's peak against the GPU's and the host's memory."""
    problems, notes = [], []
    if cuda and machine.get("gpu_total") is None:
        notes.append("no CUDA GPU on this machine: the GPU peaks are listed, not compared")
    for _, r in peaks.iterrows():
        have = machine.get("gpu_total") if r["device"] == "gpu" else machine.get("host_total")
        if have is None or r["peak_bytes"] <= have:
            continue
        size = f" at memory size {r['memory_size']}" if r["memory_size"] != "" else ""
        problems.append(Problem(
            "memory", f"{r['stage']}{size} needs about {r['peak_bytes'] / _GIB:.1f} GiB of "
            f"{r['device']} memory; this machine has {have / _GIB:.1f} GiB",
            "see the memory table below: fewer layers (convergence_layers), smaller batches, "
            "convergence_quantize, smaller memory_sizes, or a larger machine"))
    return problems, notes


def _blip2_query_shape(located: dict):
    if "blip2_model" not in located:
        return None
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(located["blip2_model"].path)
    return (int(config.num_query_tokens), int(config.qformer_config.hidden_size))


def _wants_cuda(params: dict) -> tuple[bool, list[Problem]]:
    import torch

    device = str(params.get("device") or "auto")
    if device.startswith("cuda") and not torch.cuda.is_available():
        return True, [Problem("device", f"device: {device} but this machine has no CUDA GPU",
                              "run on a CUDA machine, or set device: auto (CPU: hours to days "
                              "for real NSD)")]
    return device.startswith("cuda") or (device == "auto" and torch.cuda.is_available()), []


def run_preflight(params: dict, planned=None, cwd=None, shapes: dict | None = None,
                  cache_dir=None) -> PreflightReport:
    """Check everything a run of ``params`` needs; collect every problem.

    Parameters
    ----------
    params : dict
        A parameter set (:func:`lib.run.load_params`).
    planned : list of str or None
        Notebooks this run executes (default ``params["notebooks"]``): only their needs count.
    cwd : path-like or None
        Folder relative paths of ``params`` start from (``lib.run``: the repository root).
    shapes : dict or None
        Data shapes to use instead of reading them (:func:`lib.resources.data_shapes` keys),
        e.g. to plan a machine before the data is downloaded.
    cache_dir : path-like or None
        Hugging Face hub cache (default the hub's own).

    Returns
    -------
    report : PreflightReport
    """
    import os

    old = os.getcwd()
    os.chdir(cwd or old)
    try:
        return _run_preflight(params, list(planned or params["notebooks"]), shapes, cache_dir)
    finally:
        os.chdir(old)


def _run_preflight(params, planned, shapes, cache_dir) -> PreflightReport:
    from lib.resources import data_shapes, machine_resources, output_disk, peak_table

    report = PreflightReport()
    toy_pending = _built_by_toy_world(params.get("nsd_root", ""), params, planned) and not Path(
        params["nsd_root"]).is_dir()
    if "01_data_preparation" in planned and not toy_pending:
        problems, notes = check_nsd_files(params)
        report.problems += problems
        report.notes += notes
    report.problems += check_other_inputs(params, planned)
    try:
        entries = model_entries(params, planned)
    except (FileNotFoundError, ValueError) as err:
        report.problems.append(Problem("models", str(err), "fix vision_zoo / language_zoo"))
        entries = []
    problems, notes, located = check_models(entries, params, planned, cache_dir)
    report.problems += problems
    report.notes += notes
    cuda, problems = _wants_cuda(params)
    report.problems += problems
    report.machine = machine_resources(params.get("derived_root") or ".")
    if shapes is None and toy_pending:
        report.notes.append("memory and disk: not estimated (the run builds the toy world first)")
        return report
    if shapes is None:
        try:
            shapes = data_shapes(params["nsd_root"], int(params.get("subject", 1)),
                                 _sessions(params))
        except Exception as err:  # noqa: BLE001 - missing data is reported above
            report.notes.append(f"memory and disk: not estimated (data shapes unreadable: "
                                f"{type(err).__name__})")
            return report
    report.notes.append("shapes: " + ", ".join(f"{k} {v:,}" for k, v in shapes.items()
                                               if isinstance(v, int)))
    rows, notes = estimate_memory(params, shapes, entries, located, cuda)
    report.notes += notes
    report.memory = peak_table(rows)
    report.memory_rows = rows
    problems, notes = compare_memory(report.memory, report.machine, cuda)
    report.problems += problems
    report.notes += notes
    features = sum(r["bytes"] for r in rows if "features of every image" in r["component"])
    report.disk = output_disk(shapes, len(_subjects(params)), params,
                              _blip2_query_shape(located), features)
    need = sum(r["bytes"] for r in report.disk)
    if need > report.machine["disk_free"]:
        report.problems.append(Problem(
            "disk", f"the outputs need about {need / 1e9:.1f} GB; {report.machine['disk_path']} "
            f"has {report.machine['disk_free'] / 1e9:.1f} GB free",
            "free space, or set derived_root to a larger disk"))
    return report


def format_report(report: PreflightReport) -> str:
    """The report as text: problems (numbered, with their fixes), notes, memory, disk."""
    lines = []
    m = report.machine
    gpu = (f"{m['gpu_name']}, {m['gpu_total'] / _GIB:.1f} GiB ({m['gpu_free'] / _GIB:.1f} free)"
           if m.get("gpu_total") else "none")
    if m:
        host = (f"{m['host_total'] / _GIB:.1f} GiB ({m['host_available'] / _GIB:.1f} available)"
                if m.get("host_total") and m.get("host_available") else "unknown")
        lines.append(f"machine: GPU {gpu}; host memory {host}; "
                     f"disk {m['disk_free'] / 1e9:.1f} GB free at {m['disk_path']}")
    if report.memory is not None and len(report.memory):
        lines.append("peak memory per stage (accounting from the shapes, not a measurement):")
        width = max(len("stage"), *(len(str(s)) for s in report.memory["stage"]))
        lines.append(f"  {'stage':<{width}}  memory  device       GiB")
        for _, r in report.memory.iterrows():
            size = str(r["memory_size"])
            gib = r["peak_bytes"] / _GIB
            lines.append(f"  {r['stage']:<{width}}  {size:>6}  {r['device']:<6}  "
                         + (f"{gib:8.2f}" if gib >= 0.005 or gib == 0 else "   <0.01"))
    if report.disk:
        total = sum(r["bytes"] for r in report.disk)
        lines.append(f"outputs: about {format_size(total)} (" + "; ".join(
            f"{r['what']} {format_size(r['bytes'])}" for r in report.disk) + ")")
    lines += [f"note: {n}" for n in report.notes]
    if report.problems:
        lines.append(f"{len(report.problems)} problem(s):")
        lines += [f"{i}. {p}" for i, p in enumerate(report.problems, 1)]
    else:
        lines.append("preflight: everything the run needs is there")
    return "\n".join(lines)
