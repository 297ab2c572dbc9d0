"""Scoring of the original study's released captions and published NSD captioning results.

The reference material lives in the repository's ``reference/`` folder
(:data:`REFERENCE_ROOT`, described by its ``README.md``):

- ``brain-decoding-with-blip2/pt_type{T}_mem{K}_captions.csv`` (subject 1, 982 shared test
  images): ``nsd_id``, ``caption`` (decoded), ``true_captions`` (Python-literal list of the
  COCO references, each twice). ``type0`` = stage 1 (ridge), ``type1`` = stage 2
  (contrastive); ``K`` = trials of memory.
- ``brain-decoding-with-blip2/roi_specific_results_1.csv``: captions from single ROIs.
- ``published_nsd_captioning.csv``: published results, metrics x100, with their source.

Scale: pycocoevalcap gives BLEU/METEOR/ROUGE-L in [0, 1] and CIDEr in [0, 10]; published
tables print every metric x100. :func:`to_published_scale` multiplies ours by 100 for
side-by-side display (CIDEr 0.48 -> 48).
"""

from __future__ import annotations

import ast
import contextlib
import hashlib
import os
import re
from pathlib import Path

import numpy as np
import pandas as pd

from lib.config import REPO_ROOT
from lib.io import atomic_path, exclusive_lock

from .captions import CAPTION_METRICS, MeteorScorer, caption_metrics
from .stats import permutation_test

#: Folder of the reference material inside the repository (``reference/``).
REFERENCE_ROOT = REPO_ROOT / "reference"
#: Folder of the reference implementation's released result tables.
REFERENCE_RUNS = REFERENCE_ROOT / "brain-decoding-with-blip2"
#: Metrics that published tables print x100.
SCALED_METRICS = CAPTION_METRICS + ("SPICE", "CLIP-S")

_RUN_RE = re.compile(r"pt_type(\d+)_mem(\d+)_captions\.csv$")
_CACHE_VERSION = "1"


def read_reference_captions(path: str | os.PathLike) -> pd.DataFrame:
    """Read one ``pt_type{T}_mem{K}_captions.csv`` file.

    Returns
    -------
    frame : DataFrame
        ``nsd_id`` (int), ``caption`` (str), ``references`` (list of str, deduplicated in
        order).
    """
    path = Path(path)
    raw = pd.read_csv(path)
    missing = {"nsd_id", "caption", "true_captions"} - set(raw.columns)
    if missing:
        raise ValueError(
            f"{path}: expected columns nsd_id, caption, true_captions; missing {sorted(missing)}."
        )
    refs = []
    for i, text in enumerate(raw["true_captions"]):
        value = ast.literal_eval(text)
        if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
            raise ValueError(f"{path}: row {i}: true_captions is not a list of strings.")
        refs.append(list(dict.fromkeys(value)))
    return pd.DataFrame(
        {
            "nsd_id": raw["nsd_id"].astype(int),
            "caption": raw["caption"].fillna("").astype(str),
            "references": refs,
        }
    )


def _run_files(reference_dir: Path) -> list[tuple[Path, int, int]]:
    """The released ``(path, type, memory)`` files of ``reference_dir``, sorted; at least one."""
    runs = []
    for p in sorted(reference_dir.glob("pt_type*_mem*_captions.csv")):
        m = _RUN_RE.search(p.name)
        if m:
            runs.append((p, int(m.group(1)), int(m.group(2))))
    if not runs:
        raise FileNotFoundError(
            f"No pt_type*_mem*_captions.csv files in {reference_dir}; expected the released "
            "tables of brain-decoding-with-blip2 (see reference/README.md in the repository)."
        )
    runs.sort(key=lambda r: (r[1], r[2]))
    return runs


def _cache_key(runs, n_items, seed, shuffled) -> str:
    h = hashlib.sha1(_CACHE_VERSION.encode())
    for p, _, _ in runs:
        h.update(f"{p.name}:{p.stat().st_size}".encode())
    h.update(f"{n_items}:{seed}:{shuffled}".encode())
    return h.hexdigest()[:16]


# size: 66 lines, of which the signature and numpydoc docstring are 39 (the body is 27).
def score_reference_runs(
    reference_dir: str | os.PathLike = REFERENCE_RUNS,
    n_items: int | None = None,
    shuffled_control: bool = True,
    seed: int = 0,
    cache_path: str | os.PathLike | None = None,
    meteor: MeteorScorer | None = None,
    n_permutations: int = 10000,
) -> pd.DataFrame:
    """Score every released ``pt_type{T}_mem{K}_captions.csv`` with :func:`caption_metrics`.

    Parameters
    ----------
    reference_dir : path-like
        Folder holding the CSV files (default :data:`REFERENCE_RUNS`).
    n_items : int or None
        Score only the first ``n_items`` captions of each file (quick checks); all by default.
    shuffled_control : bool
        Also score each file's captions permuted across images (seed ``seed``): the chance
        level of every metric for that file's caption style.
    seed : int
        Seed of the shuffle.
    cache_path : path-like or None
        CSV where the table is stored (atomically) and reused when it matches the same
        files, ``n_items``, ``seed`` and ``shuffled_control``.
    meteor : MeteorScorer or None
        An open METEOR scorer to reuse; by default one is started for this call.
    n_permutations : int
        Sign flips of the paired permutation test decoded > shuffled (per-caption CIDEr and
        METEOR), reported on the decoded rows as ``p_CIDEr`` and ``p_METEOR``.

    Returns
    -------
    table : DataFrame
        One row per (file, condition): ``file``, ``stage`` ("stage1 (ridge)" for type0,
        "stage2 (contrastive)" for type1), ``type``, ``memory``, ``condition`` ("decoded" |
        "shuffled"), ``n``, then BLEU-1..4, METEOR, ROUGE-L, CIDEr on pycocoevalcap's scale,
        and with the control ``p_CIDEr``, ``p_METEOR`` (decoded rows; NaN on shuffled rows).
    """
    reference_dir = Path(reference_dir)
    runs = _run_files(reference_dir)
    key = _cache_key(runs, n_items, seed, f"{shuffled_control}:{n_permutations}")
    cached = _read_cache(cache_path, key)
    if cached is not None:
        return cached
    rows = []
    with contextlib.ExitStack() as stack:
        if cache_path is not None:  # two subjects' chapter 05 side by side: one scores
            stack.enter_context(exclusive_lock(
                f"{cache_path}.lock", "another process is scoring the released captions; "
                "waiting for its table"))
            cached = _read_cache(cache_path, key)
            if cached is not None:
                return cached
        if meteor is None:
            meteor = stack.enter_context(MeteorScorer())
        for path, typ, mem in runs:
            frame = read_reference_captions(path)
            if n_items is not None:
                frame = frame.iloc[:n_items]
            rows += _score_run(frame, path.name, typ, mem, meteor, shuffled_control, seed,
                               n_permutations)
        table = pd.DataFrame(rows)
        if cache_path is not None:
            _write_cache(table, cache_path, key)
    return table


def _write_cache(table: pd.DataFrame, cache_path, key: str) -> None:
    """Store ``table`` atomically with a ``cache_key`` column."""
    with atomic_path(cache_path) as tmp:
        table.assign(cache_key=key).to_csv(tmp, index=False)


def _read_cache(cache_path, key: str) -> pd.DataFrame | None:
    """The cached table when ``cache_path`` holds one written under ``key``, else None."""
    if cache_path is None or not Path(cache_path).exists():
        return None
    cached = pd.read_csv(cache_path)
    if "cache_key" in cached and (cached["cache_key"] == key).all():
        return cached.drop(columns="cache_key")
    return None


def _score_run(frame: pd.DataFrame, name: str, typ: int, mem: int, meteor: MeteorScorer,
               shuffled_control: bool, seed: int, n_permutations: int) -> list[dict]:
    """Rows of one released file: decoded, then (optionally) shuffled with the paired test."""
    hyps, refs = frame["caption"].tolist(), frame["references"].tolist()
    conditions = [("decoded", hyps)]
    if shuffled_control:
        perm = np.random.default_rng(seed).permutation(len(hyps))
        conditions.append(("shuffled", [hyps[j] for j in perm]))
    rows, per_item = [], []
    for condition, h in conditions:
        m = caption_metrics(h, refs, per_item=True, meteor=meteor)
        per_item.append(m["per_item"])
        rows.append(
            {
                "file": name,
                "stage": "stage1 (ridge)" if typ == 0 else "stage2 (contrastive)",
                "type": typ,
                "memory": mem,
                "condition": condition,
                "n": m["n"],
                **{k: m[k] for k in CAPTION_METRICS},
            }
        )
    if shuffled_control:
        for metric in ("CIDEr", "METEOR"):
            test = permutation_test(
                per_item[0][metric], per_item[1][metric], n_permutations, seed=seed
            )
            rows[0][f"p_{metric}"] = test["p_value"]
    return rows


def load_published(
    csv_path: str | os.PathLike = REFERENCE_ROOT / "published_nsd_captioning.csv",
) -> pd.DataFrame:
    """Published NSD captioning results (subject 1, metrics x100) with their ``source``.

    Returns
    -------
    table : DataFrame
        Columns as in the file (``method``, ``subject``, metric columns as floats,
        ``source``).
    """
    path = Path(csv_path)
    table = pd.read_csv(path)
    for col in ("method", "source"):
        if col not in table:
            raise ValueError(f"{path}: expected a {col!r} column; found {list(table.columns)}.")
    for col in table.columns:
        if col in SCALED_METRICS:
            table[col] = pd.to_numeric(table[col], errors="coerce")
    return table


def to_published_scale(metrics):
    """Put pycocoevalcap-scale metrics on the published x100 scale.

    BLEU-n, METEOR, ROUGE-L, SPICE (0-1) and CIDEr (0-10) are all multiplied by 100, as in
    published tables (e.g. CIDEr 0.413 -> 41.3). Other entries are left unchanged.

    Parameters
    ----------
    metrics : dict or DataFrame
        Output of :func:`caption_metrics` or a table with metric columns.

    Returns
    -------
    scaled : dict or DataFrame
        A copy, metric values x100 (a ``per_item`` entry is dropped from dicts).
    """
    if isinstance(metrics, pd.DataFrame):
        out = metrics.copy()
        for col in out.columns:
            if col in SCALED_METRICS:
                out[col] = pd.to_numeric(out[col], errors="coerce") * 100
        return out
    return {
        k: (v * 100 if k in SCALED_METRICS and isinstance(v, (int, float)) else v)
        for k, v in metrics.items()
        if k != "per_item"
    }


def read_roi_reference(
    csv_path: str | os.PathLike = REFERENCE_RUNS / "roi_specific_results_1.csv",
) -> pd.DataFrame:
    """Tidy table of the captions generated from single-ROI activation patterns (subject 1).

    Returns
    -------
    table : DataFrame
        ``roi`` (as in the file, e.g. "visual-V1", "floc-faces"), ``roi_family`` ("visual"
        | "floc"), ``area`` ("V1".."V4", "all" for the whole visual set, or the floc category
        "faces", "bodies", "places", "words"), ``caption``, ``temperature``, ``const``,
        ``model_type``, ``stage`` (as in :func:`score_reference_runs`).
    """
    path = Path(csv_path)
    raw = pd.read_csv(path)
    missing = {"roi", "text"} - set(raw.columns)
    if missing:
        raise ValueError(f"{path}: expected columns roi, text, ...; missing {sorted(missing)}.")
    family, area = [], []
    for roi in raw["roi"].astype(str):
        head, _, tail = roi.partition("-")
        family.append(head)
        area.append(tail if tail else "all")
    out = pd.DataFrame(
        {
            "roi": raw["roi"].astype(str),
            "roi_family": family,
            "area": area,
            "caption": raw["text"].astype(str),
        }
    )
    for col in ("temperature", "const", "model_type"):
        if col in raw:
            out[col] = raw[col]
    if "model_type" in raw:
        out["stage"] = np.where(raw["model_type"] == 0, "stage1 (ridge)", "stage2 (contrastive)")
    return out
