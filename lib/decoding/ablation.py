"""Memory-size ablation: retrieval and caption quality of the decoding runs against memory size.

Each memory size K is a separate decoding run (``stage1`` for K = 1, ``stage1_mem<K>``
otherwise; likewise ``stage2``), written by separate papermill runs of notebooks 03/04
(``lib.run`` sweeps). This module gathers what exists: caption metrics and image retrieval from
``decoding/metrics.json`` when notebook 05 evaluated the run; otherwise image retrieval is
computed here directly from each run's ``predictions.h5`` and the true Q-Former features (so
every run is scored by the same code on its current predictions, :func:`run_retrieval`),
falling back to the retrieval in ``decoding/metrics.json`` when no features are given.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd


def run_name(stage: str, memory_size: int) -> str:
    """``stage1`` for memory 1, ``stage1_mem3`` for memory 3, and so on."""
    return stage if int(memory_size) == 1 else f"{stage}_mem{int(memory_size)}"


#: Columns of :func:`memory_ablation`'s table.
ABLATION_COLUMNS = ["stage", "memory_size", "run", "source", "top1", "ci95_low", "ci95_high",
                    "chance", "k", "n_draws", "centring", "top1_shuffled", "CIDEr",
                    "CIDEr_shuffled"]


def run_retrieval(run_dir: str | os.PathLike, features: np.ndarray, feature_ids: np.ndarray,
                  k: int = 300, n_draws: int = 30, seed: int = 0) -> tuple[dict, float]:
    """Image retrieval of a run's test predictions, with notebook 05's options (book rule).

    One prediction per image, averaged over its repeats; centred on the candidates' mean
    (:data:`lib.decoding.retrieval.RETRIEVAL_CENTER`); the control pairs each prediction with
    another image's (:func:`lib.decoding.evaluate.derangement`).

    Parameters
    ----------
    run_dir : path-like
        A decoding run's folder, with ``predictions.h5``.
    features : ndarray of shape (n_images, n_query, hidden)
    feature_ids : ndarray of shape (n_images,)
        True Q-Former features and their nsd ids.
    k, n_draws, seed
        :func:`lib.metrics.retrieval_topk` settings.

    Returns
    -------
    retrieval : dict
        :func:`lib.metrics.retrieval_topk` output.
    top1_shuffled : float
        Brain -> image top-1 of the shuffled predictions.
    """
    from lib.decoding.decoder import read_predictions
    from lib.decoding.evaluate import derangement
    from lib.decoding.retrieval import RETRIEVAL_CENTER
    from lib.decoding.stage1 import lookup_features
    from lib.metrics import retrieval_topk

    pred = read_predictions(run_dir)
    true = lookup_features(np.asarray(features), np.asarray(feature_ids), pred["test_ids"])
    kw = {"k": k, "n_draws": n_draws, "seed": seed, "repeat_averaged": True,
          "center": RETRIEVAL_CENTER}
    r = retrieval_topk(pred["test_pred"], true, **kw)
    rs = retrieval_topk(pred["test_pred"][derangement(len(true), seed)], true, **kw)
    return r, rs["brain_to_image"]["mean"]


def _ablation_row(stage: str, size: int, retrieval: dict, source: str, shuffled: float,
                  metrics: dict) -> dict:
    """One row of :func:`memory_ablation`: a run's retrieval and its CIDEr (NaN if absent)."""
    name = run_name(stage, size)
    b2i = retrieval["brain_to_image"]
    caps = metrics.get(name, {}).get("captions", {})
    return {"stage": stage, "memory_size": int(size), "run": name, "source": source,
            "top1": b2i["mean"], "ci95_low": b2i["ci95_binomial"][0],
            "ci95_high": b2i["ci95_binomial"][1], "chance": retrieval["chance"],
            "k": retrieval["k"], "n_draws": retrieval["n_draws"],
            "centring": retrieval.get("options", {}).get("centring"),
            "top1_shuffled": shuffled,
            "CIDEr": caps.get("brain", {}).get("CIDEr", np.nan),
            "CIDEr_shuffled": caps.get("shuffled_brain", {}).get("CIDEr", np.nan)}


# size: 61 lines, of which the signature and numpydoc docstring are 39 (the body is 22).
def memory_ablation(
    decoding_dir: str | os.PathLike,
    memory_sizes: Sequence[int] = (1, 3, 5, 7),
    stages: Sequence[str] = ("stage1", "stage2"),
    features: np.ndarray | None = None,
    feature_ids: np.ndarray | None = None,
    k: int = 300,
    n_draws: int = 30,
    seed: int = 0,
) -> pd.DataFrame:
    """One row per existing run: memory size, image retrieval top-1 (+ interval), CIDEr.

    Retrieval is computed from the run's ``predictions.h5`` (:func:`run_retrieval`) when
    ``features`` are given, else read from ``metrics.json`` (notebook 05); CIDEr (brain and
    shuffled-brain captions) comes from ``metrics.json``; runs it has not captioned get NaN.

    Parameters
    ----------
    decoding_dir : path-like
        ``<derived>/<dataset>/subjXX/decoding``.
    memory_sizes : sequence of int
    stages : sequence of str
    features, feature_ids : ndarray, optional
        True Q-Former features (n_images, n_query, hidden) and their nsd ids. Without them,
        runs that ``metrics.json`` does not cover are left out.
    k, n_draws, seed
        Retrieval settings for runs computed here (as in notebook 05).

    Returns
    -------
    table : pandas.DataFrame
        Columns ``stage``, ``memory_size``, ``run``, ``source`` of the retrieval
        ("predictions.h5" or "metrics.json"), ``top1`` (brain -> image k-way top-1,
        :func:`lib.metrics.retrieval_topk` with notebook 05's options: centred on the
        candidates' mean, one prediction per image averaged over its repeats, strict ties),
        ``ci95_low``, ``ci95_high`` (Wilson interval of one k-way test), ``chance``, ``k``,
        ``n_draws`` (draws actually made), ``centring``, ``top1_shuffled`` (when known),
        ``CIDEr``, ``CIDEr_shuffled`` (NaN when the run was not captioned).
    """
    from lib.decoding.decoder import PREDICTIONS_FILE

    decoding_dir = Path(decoding_dir)
    mpath = decoding_dir / "metrics.json"
    metrics = json.loads(mpath.read_text()) if mpath.exists() else {}
    rows = []
    for stage in stages:
        for size in memory_sizes:
            name = run_name(stage, size)
            if features is not None and (decoding_dir / name / PREDICTIONS_FILE).exists():
                r, shuffled = run_retrieval(decoding_dir / name, features, feature_ids, k,
                                            n_draws, seed)
                source = "predictions.h5"
            elif name in metrics:
                r = metrics[name]["retrieval"]["brain"]
                shuffled = metrics[name]["retrieval"].get("shuffled_brain", {}).get(
                    "brain_to_image", {}).get("mean", np.nan)
                source = "metrics.json"
            else:
                continue
            rows.append(_ablation_row(stage, size, r, source, shuffled, metrics))
    return pd.DataFrame(rows, columns=ABLATION_COLUMNS)


def ablation_figure(table: pd.DataFrame):
    """Plotly figure: brain -> image top-1 and CIDEr against memory size, per stage.

    Error bars are the binomial (Wilson) 95% intervals of the k-way retrieval; dashed lines the
    chance level (retrieval) and the shuffled-brain control (CIDEr).
    """
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    fig = make_subplots(rows=1, cols=2, subplot_titles=[
        "brain -> image retrieval, top-1", "CIDEr of decoded captions"])
    colors = {"stage1": "#1f77b4", "stage2": "#d62728"}
    for stage, part in table.groupby("stage", sort=False):
        part = part.sort_values("memory_size")
        c = colors.get(stage, None)
        fig.add_trace(go.Scatter(
            x=part.memory_size, y=part.top1, name=stage, mode="lines+markers",
            line={"color": c}, legendgroup=stage,
            error_y={"type": "data", "symmetric": False,
                     "array": (part.ci95_high - part.top1).tolist(),
                     "arrayminus": (part.top1 - part.ci95_low).tolist()}), row=1, col=1)
        if part.CIDEr.notna().any():
            fig.add_trace(go.Scatter(x=part.memory_size, y=part.CIDEr, name=stage,
                                     mode="lines+markers", line={"color": c},
                                     legendgroup=stage, showlegend=False), row=1, col=2)
            fig.add_trace(go.Scatter(x=part.memory_size, y=part.CIDEr_shuffled,
                                     name=f"{stage} shuffled brain", mode="lines",
                                     line={"color": c, "dash": "dot"}), row=1, col=2)
    if table.chance.notna().any():
        chance = float(table.chance.dropna().max())
        fig.add_hline(y=chance, line_dash="dash", line_color="gray", row=1, col=1,
                      annotation_text=f"chance {chance:.3f}")
    for col in (1, 2):
        fig.update_xaxes(title_text="memory size (trials)", tickvals=sorted(
            table.memory_size.unique().tolist()), row=1, col=col)
    # width: the page's (the book's column is ~690 px); the legend below, out of the panels' way
    fig.update_layout(height=400, margin={"t": 40, "b": 40}, font={"size": 11},
                      legend={"orientation": "h", "x": 0, "y": -0.3, "yanchor": "top"})
    fig.update_annotations(font_size=12)  # the panel titles
    return fig


def ablation_figure_static(table: pd.DataFrame):
    """The same two panels with matplotlib (static fallback). Returns the Figure."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4))
    colors = {"stage1": "#1f77b4", "stage2": "#d62728"}
    for stage, part in table.groupby("stage", sort=False):
        part = part.sort_values("memory_size")
        c = colors.get(stage)
        yerr = np.vstack([part.top1 - part.ci95_low, part.ci95_high - part.top1])
        axes[0].errorbar(part.memory_size, part.top1, yerr=yerr, marker="o", color=c,
                         label=stage, capsize=3)
        if part.CIDEr.notna().any():
            axes[1].plot(part.memory_size, part.CIDEr, marker="o", color=c, label=stage)
            axes[1].plot(part.memory_size, part.CIDEr_shuffled, ls=":", color=c,
                         label=f"{stage} shuffled brain")
    if table.chance.notna().any():
        axes[0].axhline(float(table.chance.dropna().max()), ls="--", color="gray",
                        label="chance")
    axes[0].set(title="brain -> image retrieval, top-1", xlabel="memory size (trials)",
                ylabel="top-1 accuracy")
    axes[1].set(title="CIDEr of decoded captions", xlabel="memory size (trials)", ylabel="CIDEr")
    if not table.CIDEr.notna().any():
        axes[1].text(0.5, 0.5, "no run captioned yet\n(notebook 05, parameter runs)",
                     ha="center", va="center", transform=axes[1].transAxes, color="gray")
    axes[0].set_ylim(bottom=0)
    for ax in axes:
        ax.set_xticks(sorted(table.memory_size.unique()))
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    fig.tight_layout()
    return fig
