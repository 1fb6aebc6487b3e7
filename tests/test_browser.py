"""Sliders seen in a real browser (issue 17, item 6).

Headless runs (nbval, CI, a web page) only ever show a slider's static fallback. Here JupyterLab
runs on loopback (no token, a temporary root folder) with the widgets live (MINILDM_FAST and
MINILDM_STATIC unset), Debian's Chromium is driven by Playwright, and for each lesson with a slider
the test runs the cells the slider needs (taken from the committed notebook by cell id), drags the
slider's handle and checks that the picture changes and that no widget error shows.

Needs /usr/bin/chromium (apt-get install chromium) and the playwright package (pip install playwright;
its own browser downloads are not used). Skipped with the reason when either is missing. `.ci/run`
installs both. MINILDM_SCREENSHOTS=docs/screenshots keeps one screenshot per slider lesson there;
MINILDM_BROWSER_LESSONS=01,03 picks lessons (default: 01 only, to stay under a minute).
"""
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"
CHROMIUM = os.environ.get("MINILDM_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage"]

# lesson -> (notebook, the ids of the cells the slider needs, in order, ending with the slider cell)
SLIDERS = {
    "01": ("01_forward_diffusion", ["c01d3ec3", "dd12e533", "bf82fda3", "3af4032c", "88c649c0"]),
    "03": ("03_ddim", ["7613a33b", "954572cd", "089520cf"]),
    "05": ("05_vae", ["0663ed72", "42ed2716", "6ec71715", "56f3e0ff", "63d84a3c"]),
    "06": ("06_latent_diffusion", ["a3b480bd", "ace9f679", "STEPS = 10  # fast mode's steps: the widget is tested, not the images",
                                   "7bd953f3"]),
}
LESSONS = [k.strip() for k in os.environ.get("MINILDM_BROWSER_LESSONS", "01").split(",") if k.strip()]

sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install playwright)")
pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists(),
                                reason=f"no Chromium at {CHROMIUM} (apt-get install chromium)")


def slider_notebook(lesson: str) -> dict:
    """A notebook of the committed cells a lesson's slider needs (or literal code, for a tweak)."""
    name, cell_ids = SLIDERS[lesson]
    source = json.loads((NOTEBOOKS / f"{name}.ipynb").read_text())
    by_id = {c.get("id"): "".join(c["source"]) for c in source["cells"]}
    cells = [{"cell_type": "code", "id": f"c{i}", "metadata": {}, "execution_count": None, "outputs": [],
              "source": by_id.get(cid, cid)} for i, cid in enumerate(cell_ids)]
    return {"cells": cells, "metadata": source["metadata"], "nbformat": 4, "nbformat_minor": 5}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """JupyterLab on 127.0.0.1 without a token, serving a temporary folder; yields (url, folder)."""
    root = tmp_path_factory.mktemp("lab")
    port = free_port()
    # live widgets and inline figures: not fast mode, not static, not conftest's Agg backend
    env = {k: v for k, v in os.environ.items() if k not in ("MINILDM_FAST", "MINILDM_STATIC", "MPLBACKEND")}
    env.update(JUPYTER_CONFIG_DIR=str(root / ".config"), JUPYTER_RUNTIME_DIR=str(root / ".runtime"),
               OMP_NUM_THREADS=env.get("OMP_NUM_THREADS", "1"), PYTHONPATH=str(NOTEBOOKS.parent))
    log = open(root / "lab.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "jupyterlab", "--no-browser", "--allow-root",
                             "--ServerApp.ip=127.0.0.1", f"--ServerApp.port={port}", "--ServerApp.token=",
                             "--ServerApp.password=", "--ServerApp.disable_check_xsrf=True",
                             f"--ServerApp.root_dir={root}", "--LabApp.news_url=",
                             "--LabServerApp.open_browser=False"],
                            env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(120):
            try:
                urllib.request.urlopen(f"{url}/api/status", timeout=2)
                break
            except OSError:
                if proc.poll() is not None:
                    pytest.fail(f"JupyterLab exited: {(root / 'lab.log').read_text()[-2000:]}")
                time.sleep(0.5)
        else:
            pytest.fail("JupyterLab did not answer within 60 s")
        yield url, root
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        yield b
        b.close()


def widget_errors(page) -> list[str]:
    text = page.locator(".jp-Notebook").inner_text()
    bad = ("Error displaying widget", "Failed to load model class", "Error rendering", "Traceback")
    return [b for b in bad if b in text]


@pytest.mark.parametrize("lesson", LESSONS)
def test_slider_moves_the_picture(lab, browser, lesson, tmp_path):
    url, root = lab
    name = f"slider_{lesson}.ipynb"
    (root / name).write_text(json.dumps(slider_notebook(lesson)))
    page = browser.new_page(viewport={"width": 1280, "height": 1000})
    try:
        page.goto(f"{url}/lab/workspaces/slider{lesson}/tree/{name}?reset", timeout=60_000)   # a fresh workspace
        page.locator(".jp-Notebook").first.wait_for(timeout=60_000)
        select = page.locator(".jp-Dialog button", has_text="Select")      # "Select Kernel", if asked
        try:
            select.wait_for(timeout=5_000)
            select.click()
        except sync_api.TimeoutError:
            pass
        page.locator(".jp-Dialog").wait_for(state="detached", timeout=30_000)
        page.locator(".lm-MenuBar-itemLabel", has_text="Run").first.click()
        page.locator(".lm-Menu-itemLabel", has_text="Run All Cells").first.click()
        handle = page.locator(".jupyter-widgets .noUi-handle").first
        try:
            handle.wait_for(timeout=120_000)
        except sync_api.TimeoutError:
            page.screenshot(path=str(tmp_path / "no_slider.png"))
            raise AssertionError(f"no slider appeared; the notebook shows: "
                                 f"{page.locator('.jp-Notebook').inner_text()[-1500:]}") from None
        picture = page.locator(".widget-interact .jp-OutputArea-output img").first
        try:
            picture.wait_for(timeout=60_000)
        except sync_api.TimeoutError:
            page.screenshot(path=str(tmp_path / "no_picture.png"))
            print("DEBUG", tmp_path, page.locator(".jp-Cell").last.inner_html()[-6000:])
            raise
        before_src, before_png = picture.get_attribute("src"), picture.screenshot()
        value = page.locator(".jupyter-widgets .widget-readout").first
        before_value = value.inner_text()

        box = handle.bounding_box()
        track = page.locator(".jupyter-widgets .noUi-target").first.bounding_box()
        page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
        page.mouse.down()
        page.mouse.move(track["x"] + 0.85 * track["width"], box["y"] + box["height"] / 2, steps=8)
        page.mouse.up()
        deadline = time.time() + 90
        while time.time() < deadline and picture.get_attribute("src") == before_src:
            page.wait_for_timeout(250)
            picture = page.locator(".widget-interact .jp-OutputArea-output img").first
        after_value = value.inner_text()
        after_png = picture.screenshot()
        shots = Path(os.environ.get("MINILDM_SCREENSHOTS") or tmp_path)
        shots.mkdir(parents=True, exist_ok=True)
        cell = page.locator(".jp-Cell").last
        cell.scroll_into_view_if_needed()
        cell.screenshot(path=str(shots / f"{SLIDERS[lesson][0]}.png"))

        assert after_value != before_value, f"the slider did not move (value {before_value!r})"
        assert picture.get_attribute("src") != before_src, "the picture did not change with the slider"
        assert after_png != before_png, "the screenshots before and after moving the slider are the same"
        assert not widget_errors(page), widget_errors(page)
    finally:
        page.close()
