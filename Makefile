# Two commands for a newcomer: `make lab` (the four notebooks, headless) and `make test`.
PYTHON ?= python3
VENV   ?= .venv
PRESET ?= tiny
TRACK  ?= full
PORT   ?= 8888
BIN    := $(VENV)/bin

.PHONY: setup lab test bench clean-runs notebooks jupyter release

# --system-site-packages lets a GPU sandbox's own torch (a CUDA build) be seen and kept;
# torch==2.13.0 (CPU wheel) is installed only where no torch is importable at all.
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv --system-site-packages $(VENV)
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/python -m pip install -q "torch==2.13.0"
	$(BIN)/python -m pip install -q -e ".[dev]"
	touch $@

setup: $(VENV)/.installed

# TRACK=core runs the core's cells only (Go further's checks and long runs left out)
lab: setup
	$(BIN)/cptlab lab --preset $(PRESET) --track $(TRACK)

# pytest-xdist, a worker a core (`-n auto`), files grouped (`--dist loadgroup`, tests/conftest.py): every
# file that uses the executed lab on one worker (it is built once), each other file on one worker (a
# graded class once); each worker's processes compute on its share of the cores. One process:
# make test PYTEST_ARGS=
PYTEST_ARGS ?= -n auto --dist loadgroup --no-loadscope-reorder
test: setup
	$(BIN)/python -m pytest -q --durations=25 $(PYTEST_ARGS)

bench: setup
	$(BIN)/python benchmarks/bench.py

clean-runs:
	rm -rf runs

# The student and solution notebooks, built from notebooks/src (commit the result).
notebooks: setup
	$(BIN)/python notebooks/build.py

# JupyterLab (an optional extra) on the student notebooks, with the project's environment as kernel.
# Headless (it prints the URL with its token; open it in a browser or forward the port) and allowed
# to run as root, as containers and GPU sandboxes do: `make jupyter PORT=8890`.
jupyter: setup
	$(BIN)/python -c "import jupyterlab" 2>/dev/null || $(BIN)/python -m pip install -q -e ".[jupyter]"
	$(BIN)/jupyter lab --no-browser --allow-root --port $(PORT) notebooks/

# What learners receive: student notebooks, the library, the checks, the learner README (no solutions).
release: setup
	$(BIN)/python -m checkers release --out release
