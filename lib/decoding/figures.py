"""Figures of decoding: stage-1 quality (matplotlib, static in the book) and stage-2 training
curves (plotly)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def plot_correlations(r: np.ndarray, title: str | None = None):
    """Test correlation per query token and per hidden dimension.

    Parameters
    ----------
    r : ndarray of shape (n_query, hidden)
        Pearson r across test images of every predicted value
        (:func:`lib.decoding.stage1.correlation_map`).
    title : str or None

    Returns
    -------
    fig : matplotlib.figure.Figure
        Left: mean r of each query token (bars; whiskers = 10th-90th percentile over
        dimensions). Right: mean r of each hidden dimension over tokens, sorted, with the
        dimensions' distribution.
    """
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 3.4))
    tok = r.mean(axis=1)
    lo, hi = np.percentile(r, [10, 90], axis=1)
    a.bar(np.arange(len(tok)), tok, color="#2e86ab",
          yerr=np.vstack([tok - lo, hi - tok]), error_kw={"lw": 0.6, "alpha": 0.6})
    a.axhline(0, color="k", lw=0.6)
    a.set(xlabel="query token", ylabel="test Pearson r (mean over dims)",
          title="per query token")
    dim = np.sort(r.mean(axis=0))[::-1]
    b.plot(dim, color="#a23b72")
    b.axhline(0, color="k", lw=0.6)
    b.set(xlabel="hidden dimension (sorted)", ylabel="test Pearson r (mean over tokens)",
          title=f"per dimension (median {np.median(dim):.2f})")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def plot_pred_vs_true(pred: np.ndarray, true: np.ndarray, n_show: int = 50, seed: int = 0,
                      title: str | None = None, center: np.ndarray | None = None):
    """Predicted vs true Q-Former embeddings of the test images.

    Parameters
    ----------
    pred, true : ndarray of shape (n_test, n_query, hidden)
    n_show : int
        Test images shown in the similarity matrix.
    seed : int
        Which values are sampled for the scatter.
    title : str or None
    center : ndarray of shape (n_query, hidden) or None
        Subtracted from both before the cosine similarities (e.g. the mean training
        embedding, which removes the component shared by all images).

    Returns
    -------
    fig : matplotlib.figure.Figure
        Left: cosine similarity of flattened predicted (rows) vs true (columns) embeddings for
        ``n_show`` test images; a bright diagonal means each prediction is closest to its own
        image. Middle: distribution of matched (diagonal) vs mismatched similarities.
        Right: predicted vs true values of a random sample of (image, token, dimension) entries.
    """
    import matplotlib.pyplot as plt

    from lib.decoding.stage1 import cosine_matrix

    sim = cosine_matrix(pred, true) if center is None else cosine_matrix(pred - center,
                                                                          true - center)
    n = len(sim)
    m = min(n_show, n)
    fig, (a, b, c) = plt.subplots(1, 3, figsize=(14, 4))
    im = a.imshow(sim[:m, :m], cmap="viridis")
    fig.colorbar(im, ax=a, fraction=0.046)
    a.xaxis.get_major_locator().set_params(integer=True)
    a.yaxis.get_major_locator().set_params(integer=True)
    a.set(xlabel="true embedding (test image)", ylabel="predicted embedding (test image)",
          title=f"cosine similarity, first {m} test images")
    diag = np.diag(sim)
    off = sim[~np.eye(n, dtype=bool)]
    bins = np.linspace(min(off.min(), diag.min()), max(off.max(), diag.max()), 40)
    b.hist(off, bins=bins, density=True, alpha=0.6, label="other images", color="#888888")
    b.hist(diag, bins=bins, density=True, alpha=0.7, label="same image", color="#0b6e4f")
    b.legend()
    b.set(xlabel="cosine(pred, true)", ylabel="density", title="matched vs mismatched")
    rng = np.random.default_rng(seed)
    idx = rng.choice(pred.size, size=min(5000, pred.size), replace=False)
    x, y = true.reshape(-1)[idx], pred.reshape(-1)[idx]
    c.scatter(x, y, s=3, alpha=0.3, color="#2e86ab")
    lims = [min(x.min(), y.min()), max(x.max(), y.max())]
    c.plot(lims, lims, color="k", lw=0.6)
    c.set(xlabel="true value", ylabel="predicted value",
          title=f"values (r = {np.corrcoef(x, y)[0, 1]:.2f})")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def loss_curves(history: Sequence[dict]):
    """Plotly figure of the training and validation losses (total, MSE, contrastive).

    Parameters
    ----------
    history : list of dict
        :attr:`lib.decoding.loop.TrainResult.history` (records with ``step``, ``split`` and the
        losses).

    Returns
    -------
    fig : plotly.graph_objects.Figure
    """
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    parts = [("loss", "total loss"), ("mse", "MSE to true query tokens"),
             ("contrastive", "contrastive (brain/image-text)")]
    fig = make_subplots(rows=1, cols=3, subplot_titles=[t for _, t in parts])
    colors = {"train": "#1f77b4", "val": "#d62728"}
    for col, (key, _) in enumerate(parts, start=1):
        for split in ("train", "val"):
            recs = [h for h in history if h["split"] == split]
            fig.add_trace(go.Scatter(
                x=[h["step"] for h in recs], y=[h[key] for h in recs], name=split,
                mode="lines" if split == "train" else "lines+markers",
                line={"color": colors[split], "width": 1 if split == "train" else 2},
                legendgroup=split, showlegend=col == 1), row=1, col=col)
        fig.update_xaxes(title_text="optimizer step", row=1, col=col)
    # width: the page's (the book's column is ~690 px); the legend above, out of the panels' way
    fig.update_layout(height=340, margin={"t": 70, "b": 40}, font={"size": 11},
                      legend={"orientation": "h", "x": 1, "xanchor": "right", "y": 1.18,
                              "yanchor": "bottom"})
    fig.update_annotations(font_size=12)  # the panel titles
    return fig
