"""Figures for the book: interactive plotly output that works offline, brain maps, galleries."""

from __future__ import annotations


def show_plotly(fig) -> None:
    """Display a plotly figure in a notebook so that it also renders in the offline book.

    The output is a MIME bundle: JupyterLab draws the ``application/vnd.plotly.v1+json`` part;
    the built book uses the ``text/html`` part, which holds only the figure's ``<div>`` and its
    ``Plotly.newPlot`` call. plotly.js itself is loaded once per page from the book's local
    ``_static/vendor/plotly.min.js`` (see ``_config.yml``), never from a CDN.

    Parameters
    ----------
    fig : plotly.graph_objects.Figure
        The figure to show.
    """
    from IPython.display import display

    html = fig.to_html(full_html=False, include_plotlyjs=False, include_mathjax=False)
    bundle = {"application/vnd.plotly.v1+json": fig.to_plotly_json(), "text/html": html}
    display(bundle, raw=True)
