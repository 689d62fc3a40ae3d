"""`make jupyter` as a learner on a GPU sandbox runs it: as root and as a normal user, headless,
on the port PORT names; the URL it prints, token included, serves the lab page."""

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str, tries: int = 20) -> str:
    """The page, once the server answers (it prints its URL as it binds the port)."""
    for _ in range(tries):
        try:
            return urllib.request.urlopen(url, timeout=30).read().decode()
        except urllib.error.URLError:
            time.sleep(0.5)
    return urllib.request.urlopen(url, timeout=30).read().decode()


def _as_nobody() -> list[str]:
    if os.geteuid() != 0 or not shutil.which("setpriv"):
        pytest.skip("the normal-user case needs root to drop to nobody (setpriv)")
    prefix = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
    if subprocess.run([*prefix, sys.executable, "-c", "import jupyterlab"], capture_output=True).returncode != 0:
        pytest.skip(f"nobody cannot run {sys.executable} (its interpreter lives in a folder only root may read)")
    return prefix


def _serve_and_fetch(tmp_path: Path, prefix: list[str]) -> str:
    pytest.importorskip("jupyterlab", reason="JupyterLab is not installed: `pip install -e .[dev]`")
    if not shutil.which("make"):
        pytest.skip("make is not installed")
    home = tmp_path / "home"
    home.mkdir(mode=0o777)
    os.chmod(home, 0o777)
    os.chmod(tmp_path, 0o777)
    port = _free_port()
    venv = Path(sys.prefix)
    env = {**os.environ, "HOME": str(home), "JUPYTER_RUNTIME_DIR": str(home / "rt"), "JUPYTER_CONFIG_DIR": str(home)}
    env.pop("JUPYTER_TOKEN", None)
    proc = subprocess.Popen(
        [*prefix, "make", "-s", "jupyter", f"PORT={port}", f"VENV={venv}"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    seen = []
    try:
        deadline = time.time() + 120
        url = None
        while time.time() < deadline and url is None:
            line = proc.stdout.readline()
            if not line:
                break
            seen.append(line)
            m = re.search(rf"(http://127\.0\.0\.1:{port}/lab\?token=\w+)", line)
            url = m.group(1) if m else None
        assert url, "no URL with a token printed:\n" + "".join(seen[-30:])
        page = _get(url)
        assert "JupyterLab" in page
        return url
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)


def test_make_jupyter_serves_the_lab_as_root_or_as_the_ci_user(tmp_path):
    """As root (containers, GPU sandboxes, this CI) it no longer stops at 'Running as root'."""
    assert _serve_and_fetch(tmp_path, [])


def test_make_jupyter_serves_the_lab_as_a_normal_user(tmp_path):
    assert _serve_and_fetch(tmp_path, _as_nobody())
