"""The book builds with Jupyter Book and its pages render offline in headless Chromium."""

from __future__ import annotations

import shutil

import pytest
import yaml

from lib import run
from lib.config import REPO_ROOT
from tests.browser import inspect_pages, requires_chromium
from tests.notebook_factory import write_notebook

VENDOR = REPO_ROOT / "book" / "_static" / "vendor"
#: Screenshots of the pages the browser test opened, for people to look at.
SCREENSHOTS = REPO_ROOT / "build" / "screenshots"


def copy_book_skeleton(dest):
    """Copy the book's configuration, static assets and hand-written pages to ``dest``."""
    if (not (VENDOR / "plotly.min.js").exists()
            or not (VENDOR / "mathjax" / "tex-chtml.js").exists()):
        pytest.fail("local plotly.js / MathJax copies are missing: run `make vendor` "
                    "(part of `make setup`)")
    shutil.copy(REPO_ROOT / "_config.yml", dest / "_config.yml")
    shutil.copytree(REPO_ROOT / "book", dest / "book", ignore=shutil.ignore_patterns("run"))


@pytest.fixture(scope="session")
def small_book(tmp_path_factory):
    """A two-page book: the real intro and config, plus one executed notebook with plotly and
    math (built once per session)."""
    from tests.conftest import once

    root, _ = once(tmp_path_factory, "small_book", _build_small_book)
    return root / "_build" / "html"


def _build_small_book(root):
    """Write and build the small book in ``root``."""
    copy_book_skeleton(root)
    write_notebook(
        root / "notebooks" / "01_figure.ipynb",
        "n_points = 5",
        "md:The figure below is drawn by plotly.js from the book's own copy; "
        "the line is $y = x^2$.\n\n$$\\hat{\\beta} = (X^\\top X + \\alpha I)^{-1} X^\\top y$$",
        "import plotly.graph_objects as go\n"
        "from lib.plotting import show_plotly\n"
        "xs = list(range(n_points))\n"
        "show_plotly(go.Figure(go.Scatter(x=xs, y=[x * x for x in xs])))",
        title="A figure",
    )
    (root / "params.yaml").write_text(yaml.safe_dump({"notebooks": ["01_figure"], "n_points": 7}))
    run.run_book(root / "params.yaml", root / "book" / "run", notebook_dir=root / "notebooks",
                 cwd=REPO_ROOT, log=lambda s: None)
    toc = {
        "format": "jb-book",
        "root": "book/intro",
        "parts": [{"caption": "Figures", "chapters": [{"file": "book/run/01_figure"}]}],
    }
    (root / "_toc.yml").write_text(yaml.safe_dump(toc))
    index = run.build_book(root)
    assert index.exists()


def test_built_pages_hide_injected_parameters(small_book):
    html = (small_book / "book" / "run" / "01_figure.html").read_text()
    assert "n_points = 7" not in html  # the injected cell is removed from the page
    assert "cdn.plot.ly" not in html and "cdn.jsdelivr" not in html
    # plotly.js is loaded once on a page with a figure, from the local copy, not embedded per
    # figure, and not on pages without figures (book/_ext/plotly_pages.py)
    assert html.count("vendor/plotly.min.js") == 1
    assert html.count("Plotly.newPlot") == 1
    intro = (small_book / "book" / "intro.html").read_text()
    assert "Plotly.newPlot" not in intro and "vendor/plotly.min.js" not in intro


def test_every_script_is_on_a_page_once(small_book):
    """Sphinx 7.4 repeated inline scripts that extensions add late (sphinx-thebe's second
    ``const THEBE_JS_URL`` was a SyntaxError on every page); book/_ext/unique_scripts.py."""
    import re

    for page in ("book/intro.html", "book/run/01_figure.html"):
        head = (small_book / page).read_text().split("</head>")[0]
        scripts = re.findall(r"<script\b[^>]*>.*?</script>", head, flags=re.S)
        assert scripts and len(scripts) == len(set(scripts)), page
        assert head.count("const THEBE_JS_URL") <= 1


@pytest.mark.browser
@requires_chromium
def test_pages_render_offline_in_chromium(small_book):
    pages = [small_book / "book" / "intro.html", small_book / "book" / "run" / "01_figure.html"]
    intro, figure = inspect_pages(pages, screenshot_dir=SCREENSHOTS)
    for report in (intro, figure):
        assert report.remote_requests == [], (
            f"{report.path.name} requested {report.remote_requests}")
        assert report.title
        assert report.console_errors == [], f"{report.path.name}: {report.console_errors}"
    assert figure.plotly_svgs >= 1, "the plotly figure did not draw"
    assert figure.math_nodes >= 2, "MathJax did not typeset the page's math"
    assert figure.screenshot.stat().st_size > 10_000
