"""`make jupyter` as a learner on a GPU sandbox runs it: as root and as a normal user, headless,
on the port PORT names; the URL it prints, token included, serves the lab page."""

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
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


def _hidden_ancestor(path: Path) -> Path | None:
    """The first folder above ``path`` that others may not enter (root's home, 0700, often holds
    the interpreter the venv was made from)."""
    for parent in reversed(path.parents):
        if parent != Path("/") and not os.stat(parent).st_mode & 0o001:
            return parent
    return None


def _as_nobody() -> list[str]:
    """Commands that run what follows as the unprivileged user nobody. Where the interpreter lies
    under a folder only root may enter, bubblewrap mounts an empty folder there and binds just
    the interpreter's tree back, read-only: nobody reaches the interpreter and nothing else of it."""
    if os.geteuid() != 0 or not shutil.which("setpriv"):
        pytest.skip("the normal-user case needs root to drop to nobody (setpriv)")
    prefix = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
    base = Path(os.path.realpath(sys.executable))
    hidden = _hidden_ancestor(base)
    if hidden is not None:
        if not shutil.which("bwrap") or _hidden_ancestor(Path(sys.prefix)) or _hidden_ancestor(ROOT):
            pytest.skip(f"nobody cannot enter {hidden}, where {base} lies: apt-get install bubblewrap")
        tree = hidden / base.relative_to(hidden).parts[0]
        prefix = [
            "bwrap",
            "--dev-bind",
            "/",
            "/",
            "--tmpfs",
            str(hidden),
            "--ro-bind",
            str(tree),
            str(tree),
            "--",
            *prefix,
        ]
    done = subprocess.run(
        [*prefix, sys.executable, "-c", "import jupyterlab, os; print(os.getuid())"], capture_output=True, text=True
    )
    assert done.returncode == 0 and done.stdout.strip() == "65534", done.stderr
    return prefix


def _serve_and_fetch(tmp_path: Path, prefix: list[str]) -> str:
    pytest.importorskip("jupyterlab", reason="JupyterLab is not installed: `pip install -e .[dev]`")
    if not shutil.which("make"):
        pytest.skip("make is not installed")
    home = Path(tempfile.mkdtemp(prefix="jupyter-home-"))  # not under pytest's 0700 folder: nobody enters it
    os.chmod(home, 0o777)
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
        shutil.rmtree(home, ignore_errors=True)


def test_make_jupyter_serves_the_lab_as_root_or_as_the_ci_user(tmp_path):
    """As root (containers, GPU sandboxes, this CI) it no longer stops at 'Running as root'."""
    assert _serve_and_fetch(tmp_path, [])


def test_make_jupyter_serves_the_lab_as_a_normal_user(tmp_path):
    assert _serve_and_fetch(tmp_path, _as_nobody())
