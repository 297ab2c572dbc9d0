"""Figures that are not brain maps: offline plotly output, image galleries, convergence plots."""

from __future__ import annotations


def show_plotly(fig) -> None:
    """Display a plotly figure in a notebook so that it also renders in the offline book.

    The output is a MIME bundle: JupyterLab draws the ``application/vnd.plotly.v1+json`` part;
    the built book uses the ``text/html`` part, which holds only the figure's ``<div>`` and its
    ``Plotly.newPlot`` call. plotly.js itself is loaded once, in the head of each page that
    draws a figure, from the book's local ``_static/vendor/plotly.min.js`` (see
    ``book/_ext/plotly_pages.py``), never from a CDN.

    Parameters
    ----------
    fig : plotly.graph_objects.Figure
        The figure to show.
    """
    from IPython.display import display

    html = fig.to_html(full_html=False, include_plotlyjs=False, include_mathjax=False)
    bundle = {"application/vnd.plotly.v1+json": fig.to_plotly_json(), "text/html": html}
    display(bundle, raw=True)


def plot_gallery(images, rows_of_text, labels=None, ncols: int = 4, width: float = 3.2,
                 wrap: int = 40, title: str | None = None):
    """A grid of images, each with lines of text beneath it (e.g. reference / decoded / control).

    Parameters
    ----------
    images : ndarray of shape (n, H, W, 3), uint8, or list of such arrays
    rows_of_text : list of list of str
        For each image, the lines to print under it.
    labels : list of str or None
        Label prefixed to each line (e.g. ``["reference", "brain", "shuffled"]``); line ``j``
        of every image gets ``labels[j]`` and its own colour.
    ncols : int
        Images per row of the grid.
    width : float
        Width of one panel in inches.
    wrap : int
        Characters per text line before wrapping.
    title : str or None

    Returns
    -------
    fig : matplotlib.figure.Figure
    """
    import textwrap

    import matplotlib.pyplot as plt
    from matplotlib.offsetbox import AnchoredOffsetbox, TextArea, VPacker

    n = len(images)
    if len(rows_of_text) != n:
        raise ValueError(f"{n} images but {len(rows_of_text)} rows of text")
    ncols = max(1, min(ncols, n))
    nrows = (n + ncols - 1) // ncols
    wrapped = [[textwrap.fill((f"{labels[j]}: " if labels is not None else "") + str(line), wrap)
                for j, line in enumerate(rows)] for rows in rows_of_text]
    max_lines = max((sum(t.count("\n") + 1 for t in rows) for rows in wrapped), default=0)
    text_h = 0.15 * max_lines + 0.1 * len(labels or [])
    fig = plt.figure(figsize=(width * ncols, (width + text_h) * nrows))
    colors = ["#444444", "#0b6e4f", "#a23b72", "#2e86ab", "#c46d00"]
    row_h = 1.0 / nrows
    img_frac = width / (width + text_h)
    for i in range(n):
        r, c = divmod(i, ncols)
        bottom = 1.0 - (r + 1) * row_h + row_h * (1 - img_frac)
        ax = fig.add_axes([c / ncols + 0.01, bottom, 1.0 / ncols - 0.02, row_h * img_frac * 0.92])
        ax.imshow(images[i])
        ax.axis("off")
        boxes = [TextArea(t, textprops={"color": colors[j % len(colors)], "fontsize": 8})
                 for j, t in enumerate(wrapped[i])]
        packed = VPacker(children=boxes, align="left", pad=0, sep=3)
        ax.add_artist(AnchoredOffsetbox(loc="upper left", child=packed, frameon=False, pad=0,
                                        bbox_to_anchor=(0.0, -0.03),
                                        bbox_transform=ax.transAxes, borderpad=0))
    if title:
        fig.suptitle(title, y=1.0 + 0.02 / nrows)
    return fig


def _family_colors(families):
    import matplotlib.pyplot as plt

    cmap = plt.get_cmap("tab10")
    return {f: cmap(i % 10) for i, f in enumerate(sorted(families))}


def _hex(rgba) -> str:
    from matplotlib.colors import to_hex

    return to_hex(rgba)


def predictivity_vs_size(best, roi: str = "nsdgeneral", title: str | None = None):
    """Interactive plot of best-layer predictivity against parameter count, per family.

    Parameters
    ----------
    best : pandas.DataFrame
        One row per (model, roi) (``lib.encoding.best_layers(scores)``) with ``model``,
        ``family``, ``modality``, ``n_params``, ``roi``, ``score``, ``layer``, ``trained``.
    roi : str
        ROI shown.
    title : str or None

    Returns
    -------
    fig : plotly.graph_objects.Figure
        Log-scaled x axis; trained models joined by a line per family, untrained ones
        as open markers. Display with :func:`show_plotly`.
    """
    import plotly.graph_objects as go

    d = best[best["roi"] == roi].sort_values("n_params")
    colors = _family_colors(d["family"].unique())
    fig = go.Figure()
    for (family, modality), g in d.groupby(["family", "modality"]):
        for trained, sub in g.groupby(g["trained"].astype(bool)):
            fig.add_trace(go.Scatter(
                x=sub["n_params"], y=sub["score"], mode="lines+markers" if trained else "markers",
                name=f"{family} ({modality})" + ("" if trained else ", untrained"),
                marker={"color": _hex(colors[family]), "size": 10,
                        "symbol": "circle" if trained else "circle-open",
                        "line": {"width": 2, "color": _hex(colors[family])}},
                line={"color": _hex(colors[family]),
                      "dash": "solid" if modality == "vision" else "dash"},
                customdata=sub[["model", "layer"]].to_numpy(),
                hovertemplate="%{customdata[0]}<br>%{x:.3s} parameters<br>r = %{y:.3f}"
                              "<br>best layer %{customdata[1]}<extra></extra>",
            ))
    fig.update_xaxes(type="log", title="parameters")
    fig.update_yaxes(title=f"test Pearson r ({roi}, best layer)")
    fig.update_layout(title=title or f"Predictivity against model size: {roi}",
                      template="plotly_white", height=450, legend={"font": {"size": 10}})
    return fig


def plot_depth_profiles(scores, rois=("V1", "hV4", "faces", "places", "nsdgeneral"),
                        modality: str | None = None, trained_only: bool = True,
                        title: str | None = None, ncols: int = 4):
    """Score against normalised layer depth, one panel per ROI, one line per model.

    Parameters
    ----------
    scores : pandas.DataFrame
        ``convergence/scores.csv`` (with ``depth`` = layer / (n_layers - 1)).
    rois : sequence of str
        Panels (ROIs absent from ``scores`` are skipped).
    modality : {"vision", "language"} or None
        Keep one modality.
    trained_only : bool
    title : str or None
    ncols : int
        Panels per row.

    Returns
    -------
    fig : matplotlib.figure.Figure
        Colour = family; darker/thicker = larger model; a dot marks each model's layer
        chosen on the training images (``selected``).
    """
    import matplotlib.pyplot as plt
    import numpy as np

    d = scores if modality is None else scores[scores["modality"] == modality]
    if trained_only:
        d = d[d["trained"].astype(bool)]
    rois = [r for r in rois if r in set(d["roi"])]
    colors = _family_colors(d["family"].unique())
    ncols = max(1, min(ncols, len(rois)))
    nrows = int(np.ceil(len(rois) / ncols))
    fig, axes = plt.subplots(nrows, ncols, figsize=(3.0 * ncols + 1.6, 2.8 * nrows + 0.4),
                             sharey=True, squeeze=False)
    for ax in axes.ravel()[len(rois):]:
        ax.set_visible(False)
    for ax, roi in zip(axes.ravel(), rois):
        _depth_panel(ax, d[d["roi"] == roi], colors)
        ax.set_title(roi)
        ax.grid(alpha=0.3)
    _label_depth_figure(fig, axes, colors, title)
    return fig


def _depth_panel(ax, rows, colors) -> None:
    """One ROI's depth profiles: a line per model (darker/thicker = larger within its family),
    a dot at its selected layer."""
    import numpy as np

    for family, g in rows.groupby("family"):
        sizes = np.log(g["n_params"].astype(float))
        lo, hi = sizes.min(), sizes.max()
        for _, m in g.groupby("model"):
            m = m.sort_values("depth")
            rank = 0.5 if hi == lo else (np.log(float(m["n_params"].iloc[0])) - lo) / (hi - lo)
            ax.plot(m["depth"], m["score"], color=colors[family], alpha=0.35 + 0.65 * rank,
                    lw=0.8 + 1.6 * rank, label=family)
            top = m[m["selected"].astype(bool)]
            ax.plot(top["depth"], top["score"], "o", color=colors[family], ms=3)


def _label_depth_figure(fig, axes, colors, title) -> None:
    """Axis labels, the family legend on the right and the title of the depth-profile grid."""
    from matplotlib.lines import Line2D

    for ax in axes[-1]:
        ax.set_xlabel("normalised depth")
    for ax in axes[:, 0]:
        ax.set_ylabel("test Pearson r")
    handles = [Line2D([], [], color=c, lw=2.4) for c in colors.values()]
    fig.legend(handles, list(colors), loc="center right", fontsize=8, frameon=False,
               title="family", title_fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout(rect=(0, 0, 1 - 1.4 / fig.get_figwidth(), 1))


def plot_roi_comparison(best, rois=("V1", "V2", "V3", "hV4", "faces", "bodies", "places",
                                    "words", "nsdgeneral"), trained_only: bool = True):
    """Per ROI, each family's best model, against the noise ceiling.

    Parameters
    ----------
    best : pandas.DataFrame
        One row per (model, roi) (``lib.encoding.best_layers(scores)``), with ``score``,
        ``val_score``, ``noise_ceiling`` and ``noise_ceiling_null``.
    rois : sequence of str
    trained_only : bool

    Returns
    -------
    fig : matplotlib.figure.Figure
        Top: the test score of each family's model with the highest ``val_score`` (chosen
        on the training images; bars), the ROI's noise ceiling (black tick) and its chance
        level (grey tick); bottom: the same as a fraction of the noise ceiling
        (:func:`lib.encoding.fraction_of_ceiling`; no bar where the ceiling does not exceed
        its chance level).
    """
    import matplotlib.pyplot as plt
    import numpy as np

    from lib.encoding import fraction_of_ceiling

    d = best[best["trained"].astype(bool)] if trained_only else best
    rois = [r for r in rois if r in set(d["roi"])]
    top = d.loc[d.groupby(["family", "roi"])["val_score"].idxmax().dropna().astype(int)]
    families = sorted(top["family"].unique())
    colors = _family_colors(families)
    width = 0.8 / max(len(families), 1)
    x = np.arange(len(rois))
    fig, (ax, ax2) = plt.subplots(2, 1, figsize=(max(6, 1.0 * len(rois) + 2), 5.6), sharex=True)
    for i, family in enumerate(families):
        t = top[top["family"] == family].set_index("roi").reindex(rois)
        ax.bar(x + (i - (len(families) - 1) / 2) * width, t["score"], width,
               color=colors[family], label=family)
        ax2.bar(x + (i - (len(families) - 1) / 2) * width, fraction_of_ceiling(t), width,
                color=colors[family])
    ceiling = d.groupby("roi")[["noise_ceiling", "noise_ceiling_null"]].first().reindex(rois)
    ax.plot(x, ceiling["noise_ceiling"], "_", color="k", ms=22, mew=2, label="noise ceiling")
    ax.plot(x, ceiling["noise_ceiling_null"], "_", color="0.6", ms=22, mew=2,
            label="ceiling by chance (95%)")
    ax.set_ylabel("test Pearson r (selected layer)")
    ax2.set_ylabel("fraction of noise ceiling")
    ax2.set_xticks(x, rois, rotation=30)
    ax.legend(fontsize=8, frameon=False, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    for a in (ax, ax2):
        a.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    return fig
