"""What a run needs and what the machine has: data shapes, memory and disk, before any heavy work.

Used by the preflight (:mod:`lib.preflight`). Everything here reads headers, design tables and
model configurations only: no betas, no weights.

- :func:`data_shapes`: voxel count from the nsdgeneral mask, trial and image counts from the
  design and the sessions used.
- :func:`machine_resources`: free GPU memory (``torch.cuda.mem_get_info``), host memory
  (``/proc/meminfo``) and free disk (``shutil.disk_usage``); :func:`cpu_info`: the CPU (model,
  vector extensions), which float32 results can depend on.
- :func:`model_shape`: parameter count, depth and widths of a model from its configuration.
- :func:`preparation_memory`, :func:`convergence_memory`: the peak memory of stages 01 and 02
  as a table of components (stage 1 and 2: :func:`lib.decoding.memory.memory_table`).
- :func:`output_disk`: the size of the files a run writes.

Estimates are accounting from the shapes (bytes of the arrays each stage holds at its peak),
not measurements; allocator overheads and library workspaces come on top.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np

#: Columns of every memory table (as :func:`lib.decoding.memory.memory_table`).
MEMORY_COLUMNS = ["stage", "memory_size", "component", "device", "bytes"]
_FLOAT32 = 4
#: Bytes per weight: bfloat16 on CUDA, float32 on CPU, bitsandbytes 8 and 4 bits.
WEIGHT_BYTES = {"cuda": 2.0, "cpu": 4.0, "8bit": 1.0, "4bit": 0.5}


def data_shapes(nsd_root, subject: int, sessions=None) -> dict:
    """Shapes of one subject's data, from the nsdgeneral mask and the design file.

    Parameters
    ----------
    nsd_root : path-like
    subject : int
    sessions : list of int or None
        Sessions used; default those whose betas are present (else every design session).

    Returns
    -------
    shapes : dict
        ``n_voxels``, ``n_trials``, ``n_train_trials``, ``n_test_trials``,
        ``n_train_images``, ``n_test_images``, ``max_session_trials``, ``sessions``.
    """
    import nibabel as nib

    from lib.nsd.design import load_expdesign
    from lib.nsd.layout import NSDLayout

    layout = NSDLayout(nsd_root)
    design = load_expdesign(layout.expdesign)
    mask = np.asarray(nib.load(layout.roi(subject, "nsdgeneral")).dataobj) == 1
    sessions = [s for s in (sessions or layout.sessions_present(subject)
                            or range(1, design.n_sessions + 1)) if s <= design.n_sessions]
    per_session = [design.session_trials(s) for s in sessions]
    trials = np.concatenate(per_session) if per_session else np.zeros(0, np.int64)
    is_test = design.trial_is_test(trials)
    ids = design.trial_nsd_ids(subject, trials)
    return {"n_voxels": int(mask.sum()), "n_trials": int(trials.size),
            "n_train_trials": int((~is_test).sum()), "n_test_trials": int(is_test.sum()),
            "n_train_images": int(np.unique(ids[~is_test]).size),
            "n_test_images": int(np.unique(ids[is_test]).size),
            "max_session_trials": max((t.size for t in per_session), default=0),
            "sessions": [int(s) for s in sessions]}


def host_memory() -> dict:
    """Host memory in bytes (``/proc/meminfo``): ``total`` and ``available`` (None: unknown)."""
    info = {}
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            key, value = line.split(":", 1)
            info[key] = int(value.split()[0]) * 1024
    except (OSError, ValueError):
        pages = os.sysconf("SC_PHYS_PAGES") if hasattr(os, "sysconf") else None
        total = pages * os.sysconf("SC_PAGE_SIZE") if pages else None
        return {"total": total, "available": None}
    return {"total": info.get("MemTotal"), "available": info.get("MemAvailable")}


#: Vector extensions that decide which BLAS and oneDNN kernels run (and so how sums round).
ISA_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_tile")


def cpu_info(cpuinfo: str | None = None) -> dict:
    """The CPU this process runs on, from ``/proc/cpuinfo`` (Linux) or :mod:`platform`.

    BLAS and oneDNN choose their kernels and blocking from the CPU they find, so two runs of
    the same float32 computation on CPUs that differ here may round differently.

    Parameters
    ----------
    cpuinfo : str or None
        The text of ``/proc/cpuinfo``; None reads it (and falls back to :mod:`platform` where
        there is none).

    Returns
    -------
    info : dict
        ``vendor`` (``"GenuineIntel"``, ``"AuthenticAMD"``), ``model_name``, ``family``,
        ``model``, ``stepping``, ``cache`` (as reported, e.g. ``"307200 KB"``): strings, empty
        when unknown; ``isa``: the extensions of :data:`ISA_FLAGS` the CPU reports.
    """
    import platform

    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            cpuinfo = ""
    fields: dict[str, str] = {}
    for line in cpuinfo.splitlines():
        if not line.strip():
            if fields:
                break  # the first processor's block describes them all
            continue
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())
    name = fields.get("model name") or platform.processor()
    vendor = fields.get("vendor_id") or ("GenuineIntel" if "intel" in name.lower() else "")
    flags = set(fields.get("flags", "").split())
    return {"vendor": vendor, "model_name": name, "family": fields.get("cpu family", ""),
            "model": fields.get("model", ""), "stepping": fields.get("stepping", ""),
            "cache": fields.get("cache size", ""), "isa": [f for f in ISA_FLAGS if f in flags]}


def machine_resources(path_for_disk) -> dict:
    """What this machine has: GPU and host memory, free disk where outputs go.

    Parameters
    ----------
    path_for_disk : path-like
        Where outputs go (its nearest existing parent is measured).

    Returns
    -------
    resources : dict
        ``gpu_name``, ``gpu_free``, ``gpu_total`` (None without CUDA), ``host_total``,
        ``host_available``, ``disk_free``, ``disk_path``.
    """
    import torch

    out = {"gpu_name": None, "gpu_free": None, "gpu_total": None}
    if torch.cuda.is_available():
        free, total = torch.cuda.mem_get_info()
        out.update(gpu_name=torch.cuda.get_device_name(), gpu_free=int(free),
                   gpu_total=int(total))
    host = host_memory()
    out.update(host_total=host["total"], host_available=host["available"])
    path = Path(path_for_disk).expanduser().resolve()
    while not path.exists() and path != path.parent:
        path = path.parent
    out.update(disk_free=int(shutil.disk_usage(path).free), disk_path=str(path))
    return out


def model_shape(folder, modality: str = "vision") -> dict:
    """Size and widths of a model from its configuration (built on the meta device, no weights).

    Parameters
    ----------
    folder : path-like
        Local folder (or hub-cache snapshot) holding ``config.json``.
    modality : {"vision", "language"}

    Returns
    -------
    shape : dict
        ``n_params``, ``n_hidden`` (hidden states returned: blocks + 1), ``width`` (largest
        hidden width), ``tokens`` (vision: tokens or feature-map positions per image summed over
        stages, per unit width), ``vocab`` (language), ``conv`` (bool).
    """
    from transformers import AutoConfig

    from lib.encoding import count_parameters

    config = AutoConfig.from_pretrained(str(folder))
    inner = getattr(config, "vision_config", None) if modality == "vision" else None
    inner = inner or config
    conv = bool(getattr(inner, "hidden_sizes", None))
    if conv:
        n_hidden = len(getattr(inner, "depths", inner.hidden_sizes)) + 1
        width = max(inner.hidden_sizes)
    else:
        n_layers = (getattr(inner, "num_hidden_layers", None) or getattr(inner, "n_layer", None)
                    or getattr(inner, "num_layers", None))
        n_hidden = int(n_layers) + 1
        width = (getattr(inner, "hidden_size", None) or getattr(inner, "n_embd", None)
                 or getattr(inner, "d_model", None))
    size = _input_size(folder) or getattr(inner, "image_size", 224)
    size = size[0] if isinstance(size, (list, tuple)) else int(size)
    patch = getattr(inner, "patch_size", None)
    patch = patch[0] if isinstance(patch, (list, tuple)) else patch
    tokens = (size // int(patch)) ** 2 + 1 if patch else (size // 4) ** 2
    return {"n_params": count_parameters(folder, modality), "n_hidden": int(n_hidden),
            "width": int(width), "tokens": int(tokens),
            "vocab": int(getattr(config, "vocab_size", 0) or 0), "conv": conv}


def _input_size(folder) -> int | None:
    """Side of the images the model's processor produces (crop, else resize), if it says."""
    import json

    path = Path(folder) / "preprocessor_config.json"
    if not path.is_file():
        return None
    config = json.loads(path.read_text())
    for key in ("crop_size", "size"):
        value = config.get(key) if config.get("do_center_crop", True) or key == "size" else None
        if isinstance(value, dict):
            value = value.get("height") or value.get("shortest_edge")
        if isinstance(value, int):
            return value
    return None


def _row(stage, component, device, nbytes, memory_size=None) -> dict:
    return {"stage": stage, "memory_size": memory_size, "component": component,
            "device": device, "bytes": float(nbytes)}


def preparation_memory(shapes: dict, dtype: str = "float32") -> list[dict]:
    """Peak host memory of 01: one masked session, the statistics blocks, the noise ceilings.

    Parameters
    ----------
    shapes : dict
        From :func:`data_shapes`.
    dtype : str
        Storage type of the prepared betas.

    Returns
    -------
    rows : list of dict
        Rows with :data:`MEMORY_COLUMNS`.
    """
    v, t = shapes["n_voxels"], shapes.get("max_session_trials") or 750
    stage = "01 preparation"
    return [
        _row(stage, "one session's masked betas (float32, z-scored in place)", "host", t * v * 4),
        _row(stage, "z-score statistics, 2048-voxel float64 blocks", "host", t * 2048 * 8),
        _row(stage, "decompressed betas block being read", "host", 32 * 2**20),
        _row(stage, "noise ceiling: training repeats (images x 3 x voxels, float32, x2)", "host",
             2 * shapes["n_train_images"] * 3 * v * _FLOAT32),
    ]


def convergence_memory(shapes: dict, model: dict, params: dict, cuda: bool) -> list[dict]:
    """Peak memory of 02 for one zoo model (the largest gives the stage's peak).

    Parameters
    ----------
    shapes : dict
        From :func:`data_shapes`.
    model : dict
        From :func:`model_shape`, plus ``name`` and ``modality``.
    params : dict
        ``convergence_batch_size``, ``convergence_layers``, ``convergence_pooling``,
        ``convergence_quantize``, ``convergence_alphas``.
    cuda : bool
        Weights and ridge on the GPU (else on the host).

    Returns
    -------
    rows : list of dict
        Rows with :data:`MEMORY_COLUMNS`; component names start with ``"<model name>: "``.
    """
    stage, name = "02 convergence", model["name"]
    dev = "gpu" if cuda else "host"
    quantize = params.get("convergence_quantize") if model["modality"] == "language" else None
    per_weight = WEIGHT_BYTES[quantize or ("cuda" if cuda else "cpu")]
    act = 2 if cuda else 4  # bfloat16 autocast on CUDA
    batch = int(params.get("convergence_batch_size") or 32)
    layers = params.get("convergence_layers")
    kept = model["n_hidden"] if layers is None else (
        min(int(layers), model["n_hidden"]) if isinstance(layers, int) else len(layers))
    pooling = str(params.get("convergence_pooling") or "mean")
    cells = int(pooling[4:]) ** 2 if pooling.startswith("grid") else 1
    if model["modality"] == "language":
        texts, seq = batch * 5, 64  # COCO: 5 captions per image, up to 64 tokens
        activations = texts * seq * model["width"] * model["n_hidden"] * act
        logits = texts * model["vocab"] * act  # logits_to_keep=1: one position per text
        width = model["width"]
    else:
        activations = batch * model["tokens"] * model["width"] * model["n_hidden"] * act
        logits, width = 0, model["width"] * cells
    n_train, n_test, v = shapes["n_train_images"], shapes["n_test_images"], shapes["n_voxels"]
    n_alphas = len(params.get("convergence_alphas") or range(14))
    return [
        _row(stage, f"{name}: weights ({per_weight:g} bytes each)", dev,
             model["n_params"] * per_weight),
        _row(stage, f"{name}: hidden states of one batch ({kept} of {model['n_hidden']} kept)",
             dev, activations),
        _row(stage, f"{name}: output logits of one batch (last position)", dev, logits),
        _row(stage, f"{name}: features of every image and kept layer (float32)", "host",
             (n_train + n_test) * width * kept * _FLOAT32),
        _row(stage, f"{name}: ridge kernel and eigenvectors (train x train, float32)", dev,
             2 * n_train**2 * _FLOAT32),
        _row(stage, f"{name}: ridge betas, one layer's features, scores per alpha", dev,
             (n_train * (v + width) + n_alphas * v) * _FLOAT32),
        _row(stage, f"{name}: averaged betas and test repeats (host copy)", "host",
             ((n_train + n_test) * v + 3 * n_test * v) * _FLOAT32),
    ]


def peak_table(rows):
    """Sum components into the peak of every (stage, memory size, device).

    Stage 02 runs one model at a time: its rows are summed per model (the component's prefix
    ``"<model>: "``), and the largest model sets the peak. Rows with a ``phase`` (from
    :func:`lib.decoding.memory.memory_table`) are alive together only within their phase: the
    largest phase's sum is the peak. Other rows are summed. ``disk`` rows are left out.

    Returns
    -------
    peaks : pandas.DataFrame
        ``stage``, ``memory_size`` ("" when the stage has none), ``device``, ``peak_bytes``.
    """
    import pandas as pd

    table = pd.DataFrame(rows)
    table = table.reindex(columns=[*MEMORY_COLUMNS, "phase"])
    table = table[table["device"] != "disk"].copy()
    table["phase"] = table["phase"].astype(object).fillna("")
    # whole trial counts ("" when the stage has none), not the floats the NaNs made of them
    table["memory_size"] = [("" if pd.isna(v) else int(v)) for v in table["memory_size"]]
    model = table["component"].str.extract(r"^([^:]+): ")[0].fillna("")
    table["model"] = model.where(table["stage"] == "02 convergence", "")
    keys = ["stage", "memory_size", "device"]
    per = table.groupby([*keys, "model", "phase"], sort=False)["bytes"].sum().reset_index()
    shared = per[per["model"] == ""].groupby(keys, sort=False)["bytes"].max()
    largest = per[per["model"] != ""].groupby(keys, sort=False)["bytes"].max()
    peak = pd.concat([shared, largest]).groupby(level=[0, 1, 2], sort=False).sum()
    return peak.reset_index().rename(columns={"bytes": "peak_bytes"})


def output_disk(shapes: dict, n_subjects: int, params: dict, query_shape=None,
                feature_bytes: float = 0.0) -> list[dict]:
    """Size of the files a run writes (bytes), from the shapes.

    Parameters
    ----------
    shapes : dict
        From :func:`data_shapes` (the analysed subject; others are taken to be alike).
    n_subjects : int
        Subjects prepared by 01.
    params : dict
        ``prep_dtype``, ``memory_sizes``, ``sweeps``.
    query_shape : tuple of int or None
        (query tokens, Q-Former width) of BLIP-2; None when its configuration is unavailable.
    feature_bytes : float
        The zoo's feature caches (from :func:`convergence_memory`'s feature rows).

    Returns
    -------
    rows : list of dict
        ``what`` and ``bytes``.
    """
    v = shapes["n_voxels"]
    itemsize = np.dtype(params.get("prep_dtype") or "float32").itemsize
    rows = [{"what": f"prepared.h5 of {n_subjects} subject(s)",
             "bytes": n_subjects * shapes["n_trials"] * v * itemsize},
            {"what": "02 feature caches (every model and kept layer)", "bytes": feature_bytes}]
    if query_shape is not None:
        out = int(np.prod(query_shape))
        n_images = shapes["n_train_images"] + shapes["n_test_images"]
        rows.append({"what": "BLIP-2 Q-Former features of every image",
                     "bytes": n_images * out * _FLOAT32})
        sizes = sorted({1, *[int(k) for k in params.get("memory_sizes") or [1]]})
        for k in sizes:  # stage-1 map; stage 2: final weights, last and best checkpoint
            rows.append({"what": f"stage 1 + stage 2 maps, memory {k} (1 + 3 copies)",
                         "bytes": 4 * (v * k + 1) * out * _FLOAT32})
    return rows
