"""What learners receive (``make release``): the student notebooks, the library and the checks, and
the README's learner section; never a solution, a notebook source, a model answer or the rubric.

The repository holds the answer key (``notebooks/solutions/``, ``notebooks/src/``,
``notebooks/RUBRIC.md``), so a class is handed this folder, not the repository (nbgrader's
``release_assignment``, otter's ``assign`` student folder).
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

from cptlab.core.files import atomic_dir
from cptlab.core.results import STEP_NOTEBOOKS

REPO = Path(__file__).resolve().parents[2]
PACKAGES = ("cptlab", "checkers")
FILES = ("pyproject.toml", "benchmarks/lora_sweep_tiny.json", "data/README.md")
MAKEFILE = """# The lab as learners receive it: `make jupyter` sets up .venv and opens JupyterLab on the notebooks.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
PORT   ?= 8888

.PHONY: setup jupyter

$(VENV)/.installed: pyproject.toml
\t$(PYTHON) -m venv --system-site-packages $(VENV)
\t$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/python -m pip install -q "torch==2.13.0"
\t$(BIN)/python -m pip install -q -e ".[jupyter]"
\ttouch $@

setup: $(VENV)/.installed

jupyter: setup
\t$(BIN)/jupyter lab --no-browser --allow-root --port $(PORT) notebooks/
"""


def learner_readme(readme: str) -> str:
    """The README's title paragraph and its learner section, nothing for instructors."""
    title = readme.split("\n## ", 1)[0]
    m = re.search(r"^### For a learner\n(.*?)(?=^### |^## )", readme, re.S | re.M)
    body = m.group(1) if m else ""
    return f"{title.strip()}\n\n## Working through the lab\n{body}"


def release(out: Path) -> Path:
    """Write the learners' folder ``out`` (replaced if it exists)."""
    out = Path(out)
    if out.resolve() == REPO or REPO in out.resolve().parents and out.resolve().parent == REPO / "notebooks":
        raise ValueError(f"{out}: choose a folder outside the repository's sources, e.g. release/")
    with atomic_dir(out) as tmp:
        for pkg in PACKAGES:
            shutil.copytree(REPO / pkg, tmp / pkg, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        (tmp / "notebooks").mkdir(parents=True)
        for name in STEP_NOTEBOOKS.values():
            shutil.copy2(REPO / "notebooks" / name, tmp / "notebooks" / name)
        for rel in FILES:
            (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / rel, tmp / rel)
        (tmp / "Makefile").write_text(MAKEFILE)
        (tmp / "README.md").write_text(learner_readme((REPO / "README.md").read_text()))
    return out
