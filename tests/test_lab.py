"""A chapter opened in JupyterLab, run top to bottom in headless Chromium, on the micro world.

What `make lab` gives a student: the server at the repository root, a kernel started in the
notebook's own folder, and ``BRAINCAP_PARAMS=micro`` choosing the micro preset. The notebook is
a copy in a temporary ``notebooks/`` folder, so running it there leaves the sources untouched
and checks that nothing depends on the working directory.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

from lib.config import PARAMS_ENV, REPO_ROOT
from tests.browser import chromium_path, requires_chromium

pytestmark = [pytest.mark.browser, pytest.mark.slow, requires_chromium]

#: The chapter run: the shortest one with an interactive (plotly) figure that needs only the world.
CHAPTER = "00_toy_world"
SCREENSHOTS = REPO_ROOT / "build" / "screenshots"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _lab_environment(tmp_path) -> dict:
    """Environment of the server: micro preset, private settings, every cell rendered."""
    settings = tmp_path / "lab-settings"
    tracker = settings / "@jupyterlab" / "notebook-extension" / "tracker.jupyterlab-settings"
    tracker.parent.mkdir(parents=True)
    # JupyterLab 4 renders only the cells in view by default; the checks read every cell
    tracker.write_text(json.dumps({"windowingMode": "none"}))
    env = {k: v for k, v in os.environ.items() if k != "TQDM_DISABLE"}
    env.update({
        PARAMS_ENV: "micro",
        "JUPYTERLAB_SETTINGS_DIR": str(settings),
        "JUPYTERLAB_WORKSPACES_DIR": str(tmp_path / "lab-workspaces"),
        "JUPYTER_CONFIG_DIR": str(tmp_path / "jupyter-config"),
        "JUPYTER_RUNTIME_DIR": str(tmp_path / "jupyter-runtime"),
        "PYTHONPATH": os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH")) if p),
    })
    return env


@pytest.fixture()
def lab_server(micro_root, tmp_path):
    """``jupyter lab --no-browser`` on a free loopback port with a token; yields (url, root)."""
    root = tmp_path / "lab"
    (root / "notebooks").mkdir(parents=True)
    shutil.copy(REPO_ROOT / "notebooks" / f"{CHAPTER}.ipynb", root / "notebooks")
    port, token = _free_port(), secrets.token_hex(16)
    log = (tmp_path / "lab.log").open("w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "jupyter", "lab", "--no-browser", "--ip=127.0.0.1",
         f"--port={port}", "--port-retries=0", f"--IdentityProvider.token={token}",
         f"--ServerApp.root_dir={root}"]
        + (["--allow-root"] if hasattr(os, "geteuid") and os.geteuid() == 0 else []),
        env=_lab_environment(tmp_path), stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                urllib.request.urlopen(f"{url}/api/status?token={token}", timeout=5)
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"jupyter lab did not start: {(tmp_path / 'lab.log').read_text()}")
                time.sleep(1)
        yield f"{url}/lab/tree/notebooks/{CHAPTER}.ipynb?token={token}", root
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def _started(prompts: list[str]) -> bool:
    """Whether any cell is queued, running (``[*]``) or has run (``[3]``)."""
    return any("*" in t or t.strip("[]: \u00a0").isdigit() for t in prompts)


def _run_all_cells(page, timeout_s: float = 900) -> None:
    """Run every cell with JupyterLab's own command; wait until none is queued or running.

    Run All stops at the first error, which also ends the wait; the saved notebook then shows
    which cells ran.
    """
    page.wait_for_selector(".jp-Notebook .jp-Cell", timeout=120_000)
    prompts = page.locator(".jp-CodeCell .jp-InputArea-prompt")
    for _ in range(3):  # a click before the kernel is connected can be lost: try again
        page.locator(".jp-Notebook .jp-Cell").first.click()
        page.click(".lm-MenuBar-item:has-text('Run')")
        page.click(".lm-Menu-item[data-command='runmenu:run-all']")
        if _poll(lambda: _started(prompts.all_inner_texts()), page, 10):
            break

    def finished():
        texts[:] = prompts.all_inner_texts()
        return _started(texts) and not any("*" in t for t in texts)

    texts = []
    if not _poll(finished, page, timeout_s):
        pytest.fail(f"cells still queued or running after {timeout_s:.0f} s: {texts}")


def _poll(condition, page, timeout_s: float, every_ms: int = 500) -> bool:
    """Whether ``condition()`` became true within ``timeout_s`` (checked every ``every_ms``)."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            return False
        page.wait_for_timeout(every_ms)
    return True


def _saved_cells(path) -> list[dict]:
    """The code cells of the notebook file as saved (an empty list while it is being written)."""
    try:
        return [c for c in json.loads(path.read_text())["cells"] if c["cell_type"] == "code"]
    except (OSError, ValueError):
        return []


def test_chapter_runs_in_jupyterlab_on_micro(lab_server):
    from playwright.sync_api import sync_playwright

    url, root = lab_server
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium_path(), args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(url, wait_until="domcontentloaded")
            _run_all_cells(page)
            tracebacks = page.locator(".jp-OutputArea-output",
                                      has_text="Traceback (most recent call last)")
            errors = tracebacks.all_inner_texts()
            plotly = page.locator(".jp-OutputArea .js-plotly-plot")
            if plotly.count():
                plotly.first.scroll_into_view_if_needed()
            page.wait_for_timeout(1000)
            SCREENSHOTS.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(SCREENSHOTS / "lab_00_toy_world.png"))
            n_plotly, n_svg = plotly.count(), page.locator(".js-plotly-plot .main-svg").count()
            page.click(".lm-MenuBar-item:has-text('File')")  # the saved copy: every output
            page.click(".lm-Menu-item[data-command='docmanager:save']")
            saved = root / "notebooks" / f"{CHAPTER}.ipynb"
            _poll(lambda: any(c["execution_count"] for c in _saved_cells(saved)), page, 30)
        finally:
            browser.close()
    assert errors == [], f"cells failed in JupyterLab:\n{errors[0][:2000]}"
    assert n_plotly >= 1 and n_svg >= 1, "no plotly figure rendered in JupyterLab"
    code = _saved_cells(saved)
    assert code and all(c["execution_count"] for c in code), "not every cell ran"
    failed = [o for c in code for o in c["outputs"] if o["output_type"] == "error"]
    assert failed == [], failed[0]
    printed = "".join("".join(o.get("text", "")) for c in code for o in c["outputs"])
    assert "micro.yaml sets" in printed  # BRAINCAP_PARAMS=micro chose the preset
