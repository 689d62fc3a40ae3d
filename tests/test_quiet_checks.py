"""What a learner sees under a check cell: the report and nothing else. Every check runs on the
solution notebooks' answers in a fresh interpreter (transformers warns once per process), and
whatever it prints besides the verdicts fails the test; the cases it draws are physically possible."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

SCRIPT = """
from pathlib import Path
import nbformat
from checkers.core.questions import QUESTIONS
from checkers.grading.judge import CHECKS, setup_imports
from checkers.grading.submissions import _answer_cells, setup_cell

ns = {"__name__": "__learner__"}
for path in sorted(Path("notebooks/solutions").glob("0*.ipynb")):
    nb = nbformat.read(path, as_version=4)
    exec(setup_imports(setup_cell(nb)), ns)
    for cell in _answer_cells(nb):
        if cell.cell_type == "code":
            exec(cell.source, ns)
mfu_seen = []
mfu = ns["mfu"]
ns["mfu"] = lambda *a: mfu_seen.append(mfu(*a)) or mfu_seen[-1]
for qid, check in CHECKS.items():
    if qid != "4.6":  # production_choices on the learner's own study: the class test grades it
        fns = [ns[f] for f in QUESTIONS[qid].functions]
        print(qid, check(*fns, seed=SEED).passed)
print("mfu", max(mfu_seen) <= 1.0 and min(mfu_seen) > 0.0)
"""


@pytest.mark.slow
def test_no_check_prints_a_library_warning_and_no_case_is_impossible():
    for seed in (5,):
        done = subprocess.run(
            [sys.executable, "-c", SCRIPT.replace("SEED", str(seed))],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert done.returncode == 0, done.stderr[-2000:]
        assert done.stderr == "", f"a check printed to stderr:\n{done.stderr}"
        lines = done.stdout.splitlines()
        assert all(line.endswith(" True") for line in lines) and len(lines) == 14, done.stdout


@pytest.mark.slow  # a second process or a compiler: seconds, not the quick suite's
def test_the_quiet_test_hears_a_warning():
    """The same run with one warning made to happen: the test above would fail on it."""
    noisy = (
        SCRIPT.replace("SEED", "0")
        .replace(
            "mfu_seen = []",
            "from transformers import GPT2Config, GPT2LMHeadModel\n"
            "GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=8, n_head=2, vocab_size=60))\nmfu_seen = []",
        )
        .replace("for qid, check in CHECKS.items():", "for qid, check in list(CHECKS.items())[:1]:")
    )
    done = subprocess.run([sys.executable, "-c", noisy], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert "bos_token_id must be" in done.stderr
