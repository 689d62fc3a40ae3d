"""What a learner sees, in a real browser: JupyterLab runs a step notebook through its UI (the
check table renders as HTML with every row passed, no cell errors, a progress bar is a widget),
and a run's index.html shows every plot and its formulas typeset, offline. Debian's Chromium and chromedriver drive it
(`apt-get install chromium chromium-driver`); without them these tests are skipped, saying so."""

import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import nbformat
import pytest

from cptlab.core.results import STEP_NOTEBOOKS
from cptlab.notebook.execute import NOTEBOOK_DIR
from cptlab.notebook.tracks import for_track

pytestmark = pytest.mark.slow
ARTIFACTS = Path(__file__).parent / "artifacts"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
DRIVER = shutil.which("chromedriver")


def _skip_without_browser():
    if not (CHROMIUM and DRIVER):
        pytest.skip(
            "no Chromium + chromedriver on this machine: `apt-get install chromium chromium-driver` (as .ci/run does)"
        )
    pytest.importorskip("selenium", reason="selenium is not installed: `pip install -e .[dev]`")


def _browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--window-size=1400,2200",
    ):
        opts.add_argument(arg)
    return webdriver.Chrome(service=Service(DRIVER), options=opts)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait(fn, timeout: float, what: str, step: float = 0.5):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = fn()
        if value:
            return value
        time.sleep(step)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


@pytest.fixture(scope="module")
def lab_dir(tmp_path_factory, lab_run):
    """A folder with notebook 3 (solution, smoke preset, the core's cells: Go further's long runs are
    executed headless by ``lab_run``) ready to run: steps 1 and 2 taken from the shared ``lab_run``
    (its step 3 and 4 left behind, so notebook 3 runs from its start)."""
    _skip_without_browser()
    pytest.importorskip("jupyterlab", reason="JupyterLab is not installed: `pip install -e .[dev]`")
    work = tmp_path_factory.mktemp("jlab")
    run = work / "run"
    later = ("step3_*", "step4_*", "models", "checkpoints", "plots", "index.html", "*.ipynb", "manifest.json")
    shutil.copytree(lab_run, run, ignore=shutil.ignore_patterns(*later))
    nb = for_track(nbformat.read(NOTEBOOK_DIR / "solutions" / STEP_NOTEBOOKS[3], as_version=4), "core")
    cell = next(c for c in nb.cells if "parameters" in c.metadata.get("tags", []))
    cell.source = f'PRESET = "smoke"\nRUN_DIR = {str(run)!r}\nSEED = 1234\nOVERRIDES = {{}}'
    nbformat.write(nb, work / STEP_NOTEBOOKS[3])
    return work


@pytest.fixture(scope="module")
def jupyterlab(lab_dir):
    port, token = _free_port(), secrets.token_hex(16)
    env = {
        **os.environ,
        "JUPYTER_RUNTIME_DIR": str(lab_dir / ".runtime"),
        "JUPYTER_CONFIG_DIR": str(lab_dir / ".config"),
    }
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "jupyterlab",
            "--no-browser",
            "--ip=127.0.0.1",
            f"--port={port}",
            f"--IdentityProvider.token={token}",
            f"--ServerApp.root_dir={lab_dir}",
            "--LabApp.expose_app_in_browser=True",
            "--ServerApp.open_browser=False",
            "--ServerApp.allow_root=True",
            "--LabApp.news_url=",
            "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"

    def up():
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return True
        except OSError:
            return False

    try:
        _wait(up, 60, "JupyterLab to listen")
        yield url, token
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()


STATE = """
const app = window.jupyterapp;
if (!app) return null;
const w = app.shell.currentWidget;
if (!w || !w.content || !w.sessionContext || !w.sessionContext.session || !w.sessionContext.session.kernel) return null;
const cells = w.content.widgets.filter(c => c.model.type === 'code');
const outputs = cells.map(c => c.model.outputs.toJSON());
return {status: w.sessionContext.session.kernel.status,
        done: cells.filter(c => c.model.executionCount !== null).length, cells: cells.length,
        errors: outputs.flat().filter(o => o.output_type === 'error').map(o => o.ename + ': ' + o.evalue)};
"""


def test_a_step_notebook_runs_in_jupyterlab(jupyterlab, lab_dir):
    from selenium.webdriver.common.by import By

    url, token = jupyterlab
    ARTIFACTS.mkdir(exist_ok=True)
    driver = _browser()
    try:
        driver.get(f"{url}/lab/tree/{STEP_NOTEBOOKS[3]}?token={token}")
        _wait(lambda: (driver.execute_script(STATE) or {}).get("status") == "idle", 120, "the kernel to start")
        driver.execute_script("window.jupyterapp.commands.execute('notebook:run-all-cells');")
        state = _wait(
            lambda: (lambda s: s if s and s["status"] == "idle" and s["done"] == s["cells"] else None)(
                driver.execute_script(STATE)
            ),
            300,
            "every cell to run",
        )
        assert state["errors"] == [], state["errors"]
        tables = [t for t in driver.find_elements(By.CSS_SELECTOR, ".jp-OutputArea-output table") if "hint" in t.text]
        assert len(tables) >= 3, "the check tables are not rendered as HTML"
        for t in tables:
            rows = t.find_elements(By.CSS_SELECTOR, "tr")[1:]
            assert rows and all("\u2714" in r.text for r in rows), t.text
        bars = driver.find_elements(
            By.CSS_SELECTOR, ".jp-OutputArea-output .widget-hprogress, .jp-OutputArea-output progress"
        )
        assert bars, "no progress bar rendered as a widget"
        table = tables[-1]
        driver.execute_script("arguments[0].scrollIntoView({block: 'center'});", table)
        time.sleep(0.5)
        driver.save_screenshot(str(ARTIFACTS / "jupyterlab_step3.png"))
    finally:
        driver.quit()
    assert (ARTIFACTS / "jupyterlab_step3.png").stat().st_size > 10_000


def test_index_html_shows_every_plot(lab_run):
    _skip_without_browser()
    run = lab_run
    page = run / "index.html"  # written by `cptlab lab`'s grader, after the plots
    driver = _browser()
    try:
        driver.get(page.resolve().as_uri())
        _wait(lambda: driver.execute_script("return document.readyState") == "complete", 30, "the page to load")
        images = driver.execute_script("return Array.from(document.images).map(i => [i.complete, i.naturalWidth]);")
        assert len(images) >= 6, f"{len(images)} images"
        assert all(ok and width > 0 for ok, width in images), images
        assert "Step 4: the trade-off" in driver.page_source
        # the formulas typeset, offline: MathJax from the run folder, nothing left as raw TeX
        _wait(
            lambda: driver.execute_script("return document.querySelectorAll('.MathJax_Display').length") >= 1,
            60,
            "MathJax to typeset notebook 1's perplexity formula",
        )
        scripts = driver.execute_script("return Array.from(document.scripts).map(s => s.src).filter(s => s);")
        assert scripts and all(src.startswith("file://") for src in scripts), scripts
        shown = driver.execute_script("return document.body.innerText;")
        assert "$$" not in shown and "\\mathrm{ppl}" not in shown
        driver.save_screenshot(str(ARTIFACTS.joinpath("index_html.png")))
    finally:
        driver.quit()
    nb = json.loads((run / STEP_NOTEBOOKS[3]).read_text())
    text = json.dumps(nb["cells"])
    assert "100%" in text and "RuntimeWarning" not in text and "FutureWarning" not in text
