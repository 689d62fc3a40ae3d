"""The project's Python keeps one style: ruff with the settings in pyproject.toml (lines of at most
120 characters, imports sorted, no unused or undefined names)."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _ruff() -> list[str]:
    exe = shutil.which("ruff", path=str(Path(sys.executable).parent)) or shutil.which("ruff")
    if exe is None:
        pytest.fail("ruff is not installed: `pip install -e .[dev]` (make setup does)")
    return [exe]


def test_ruff_finds_nothing_in_the_project():
    done = subprocess.run([*_ruff(), "check", "--no-cache", "."], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr


def test_ruff_would_fail_a_line_of_121_characters(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("x = " + repr("a" * 115) + "\n")
    assert len(bad.read_text().splitlines()[0]) == 121
    done = subprocess.run(
        [*_ruff(), "check", "--no-cache", "--config", str(ROOT / "pyproject.toml"), str(bad)],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 1 and "E501" in done.stdout, done.stdout
