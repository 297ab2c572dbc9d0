"""Results across subjects: gather each subject's tables, then mean and spread.

Every subject is analysed on its own (its own split, ridge, layer choice and controls); this
module only reads what the per-subject chapters wrote and puts the subjects side by side::

    scores = gather(derived_root, dataset, subjects, read_scores)
    mean_spread(best, by=["model"], value="score")
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence

import numpy as np
import pandas as pd

from lib.config import subject_dir


def read_scores(folder) -> pd.DataFrame:
    """A subject's convergence scores (``convergence/scores.csv``, written by 02)."""
    return pd.read_csv(folder / "convergence" / "scores.csv")


def read_metrics(folder) -> dict:
    """A subject's decoding metrics (``decoding/metrics.json``, written by 05), keyed by run."""
    return json.loads((folder / "decoding" / "metrics.json").read_text())


def gather(derived_root: str | os.PathLike, dataset: str, subjects: Sequence[int],
           read: Callable) -> tuple[dict, list[int]]:
    """Read one result of every subject that has it.

    Parameters
    ----------
    derived_root : path-like
        Root of the derived results (``<derived_root>/<dataset>/subjXX/``).
    dataset : str
        ``"toy"``, ``"micro"`` or ``"nsd"``.
    subjects : sequence of int
        Subjects to look for.
    read : callable
        ``read(subject_folder) -> result``, e.g. :func:`read_scores` or :func:`read_metrics`.

    Returns
    -------
    found : dict
        ``subject -> result`` for the subjects whose files exist.
    missing : list of int
        Subjects without the files (not run yet, or their job failed).
    """
    found, missing = {}, []
    for subject in subjects:
        try:
            found[int(subject)] = read(subject_dir(derived_root, dataset, subject))
        except FileNotFoundError:
            missing.append(int(subject))
    return found, missing


def stack(tables: dict[int, pd.DataFrame]) -> pd.DataFrame:
    """Concatenate per-subject tables with a leading ``subject`` column."""
    if not tables:
        return pd.DataFrame(columns=["subject"])
    return pd.concat([t.assign(subject=s) for s, t in tables.items()], ignore_index=True)[
        ["subject", *next(iter(tables.values())).columns]]


def mean_spread(table: pd.DataFrame, by: Sequence[str], value: str) -> pd.DataFrame:
    """Mean, standard deviation and range of ``value`` across subjects, per group.

    Parameters
    ----------
    table : pandas.DataFrame
        One row per subject and group (a ``subject`` column, the ``by`` columns, ``value``).
    by : sequence of str
        Grouping columns, e.g. ``["run", "condition"]``.
    value : str
        Column to summarise.

    Returns
    -------
    summary : pandas.DataFrame
        ``by`` columns, then ``n_subjects``, ``mean``, ``sd`` (ddof 1; NaN for one subject),
        ``min``, ``max`` and ``values`` (each subject's value, ``"s1: 0.41, s2: 0.38"``).
    """
    rows = []
    for keys, g in table.groupby(list(by), sort=False):
        keys = keys if isinstance(keys, tuple) else (keys,)
        v = g[value].to_numpy(float)
        rows.append({**dict(zip(by, keys)), "n_subjects": len(v), "mean": float(np.mean(v)),
                     "sd": float(np.std(v, ddof=1)) if len(v) > 1 else float("nan"),
                     "min": float(np.min(v)), "max": float(np.max(v)),
                     "values": ", ".join(f"s{s}: {x:.3g}" for s, x in zip(g["subject"], v))})
    return pd.DataFrame(rows)


def caption_table(metrics: dict[int, dict], measures: Sequence[str] = ("CIDEr", "METEOR")
                  ) -> pd.DataFrame:
    """Caption metrics of every subject, run and condition (brain and its controls).

    Parameters
    ----------
    metrics : dict
        ``subject -> metrics.json contents`` (:func:`read_metrics`).
    measures : sequence of str
        Caption metrics to keep.

    Returns
    -------
    table : pandas.DataFrame
        ``subject``, ``run``, ``condition`` (``brain``, ``shuffled_brain``, ``nearest_train``,
        ``image_upper_bound``), ``metric``, ``value`` and ``p_brain_vs_shuffled`` (the
        subject's own one-sided permutation test of brain against shuffled captions).
    """
    rows = []
    for subject, by_run in metrics.items():
        for run, m in by_run.items():
            tests = m.get("permutation_brain_vs_shuffled", {})
            for condition, values in m.get("captions", {}).items():
                for metric in measures:
                    if metric in values:
                        rows.append({"subject": subject, "run": run, "condition": condition,
                                     "metric": metric, "value": values[metric],
                                     "p_brain_vs_shuffled": tests.get(metric, {}).get("p_value")})
    return pd.DataFrame(rows)
