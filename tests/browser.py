"""Open built book pages in headless Chromium and report what rendered and what was requested."""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path

import pytest

LOCAL_SCHEMES = ("file:", "data:", "blob:", "about:")
#: True once every plotly figure on the page has drawn its SVG (no figures: at once).
_FIGURES_DRAWN = """() => [...document.querySelectorAll('.plotly-graph-div')].every(
    d => d.classList.contains('js-plotly-plot') && d.querySelector('.main-svg'))"""
#: Resolves when MathJax has typeset the page (pages without math do not load MathJax), or
#: after ``ms`` milliseconds.
_MATH_TYPESET = """ms => !(window.MathJax && MathJax.startup && MathJax.startup.promise) ? true
    : Promise.race([MathJax.startup.promise.then(() => true),
                    new Promise(done => setTimeout(() => done(false), ms))])"""


def chromium_path() -> str | None:
    """Path of Debian's ``chromium`` (or ``chromium-browser``), or None."""
    return shutil.which("chromium") or shutil.which("chromium-browser")


#: Skip mark for tests that need headless Chromium (use together with ``pytest.mark.browser``).
requires_chromium = pytest.mark.skipif(
    chromium_path() is None, reason="Debian `chromium` is not installed"
)


@dataclass
class PageReport:
    """What one page showed in the browser."""

    path: Path
    title: str
    plotly_svgs: int
    math_nodes: int
    remote_requests: list[str] = field(default_factory=list)
    console_errors: list[str] = field(default_factory=list)
    screenshot: Path | None = None


def _wait_for_figures_and_math(page, timeout_ms: int = 20_000) -> None:
    """Wait until the page's plotly figures have drawn and MathJax has typeset its math.

    A figure that never draws is not an error here: the report then counts fewer SVGs than
    figures, which is what the tests check.
    """
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    try:
        page.wait_for_function(_FIGURES_DRAWN, timeout=timeout_ms)
        page.evaluate(_MATH_TYPESET, timeout_ms)
    except PlaywrightTimeout:
        pass


def inspect_pages(pages: list[Path], screenshot_dir: Path | None = None) -> list[PageReport]:
    """Load each page offline in headless Chromium.

    Every request that is not a local file is recorded and aborted, so a page that depends on
    a CDN shows up both in ``remote_requests`` and as missing content.

    Parameters
    ----------
    pages : list of Path
        HTML files of a built book.
    screenshot_dir : Path or None
        Where to save a full-page PNG of each page.
    """
    from playwright.sync_api import sync_playwright

    reports = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium_path(), args=["--no-sandbox"])
        try:
            for path in pages:
                page = browser.new_page(viewport={"width": 1280, "height": 900})
                remote, errors = [], []

                def _route(route, *_request, remote=remote):  # playwright may pass the request
                    url = route.request.url
                    if url.startswith(LOCAL_SCHEMES):
                        route.continue_()
                    else:
                        remote.append(url)
                        route.abort()

                page.route("**/*", _route)
                page.on("console", lambda m, errors=errors:
                        errors.append(m.text) if m.type == "error" else None)
                page.on("pageerror", lambda e, errors=errors: errors.append(str(e)))
                page.goto(Path(path).resolve().as_uri(), wait_until="load")
                _wait_for_figures_and_math(page)
                shot = None
                if screenshot_dir is not None:
                    screenshot_dir.mkdir(parents=True, exist_ok=True)
                    shot = screenshot_dir / f"{Path(path).stem}.png"
                    page.screenshot(path=str(shot), full_page=True)
                reports.append(
                    PageReport(
                        path=Path(path),
                        title=page.title(),
                        plotly_svgs=page.locator(".js-plotly-plot .main-svg").count(),
                        math_nodes=page.locator("mjx-container").count(),
                        remote_requests=remote,
                        console_errors=errors,
                        screenshot=shot,
                    )
                )
                page.close()
        finally:
            browser.close()
    return reports
