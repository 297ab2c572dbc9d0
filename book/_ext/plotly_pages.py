"""Sphinx extension of the book: plotly.js only on the pages that draw plotly figures.

The figures in the executed notebooks carry only their data and a ``Plotly.newPlot`` call
(:func:`lib.plotting.show_plotly`); the page must load plotly.js before them. Loading the
4.8 MB script on every page made each page wait about 1.5 s (2-core machine, headless
Chromium: intro page interactive after 1.7-2.0 s with it, 0.2 s without), figures or not.
"""

from __future__ import annotations

#: The local copy (``make vendor``), under ``html_static_path``.
PLOTLY_JS = "vendor/plotly.min.js"


def add_plotly_where_drawn(app, pagename, templatename, context, doctree) -> None:
    """``html-page-context`` handler: add plotly.js to this page if its body draws a figure."""
    if "Plotly.newPlot" in context.get("body", ""):
        app.add_js_file(PLOTLY_JS)


def setup(app):
    app.connect("html-page-context", add_plotly_where_drawn)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
