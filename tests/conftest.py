import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from hypothesis import settings

# Property tests draw the same examples on every run (CI passes or fails for a reason, not by chance);
# `HYPOTHESIS_PROFILE=explore` draws new (and many more) ones when hunting for bugs by hand.
settings.register_profile("cptlab", derandomize=True, database=None, print_blob=True)
settings.register_profile("explore", derandomize=False, max_examples=2000, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "cptlab"))

# Tests never touch the user's caches or a hub.
os.environ.setdefault("CPTLAB_CACHE", tempfile.mkdtemp(prefix="cptlab-test-cache-"))
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Under pytest-xdist each worker, and every kernel, sandbox and call server it starts, computes on its
# share of the cores: two workers of two threads each on two cores would spin against each other.
if os.environ.get("PYTEST_XDIST_WORKER"):
    _share = max(1, (os.cpu_count() or 1) // int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")))
    os.environ.setdefault("OMP_NUM_THREADS", str(_share))
    os.environ.setdefault("CPTLAB_THREADS", str(_share))

ENGLISH = (
    "The quick brown fox jumps over the lazy dog. Continued pre-training keeps training a language model "
    "on new text from one domain. It gains on that domain and may forget some of what it knew before. "
    "Perplexity is the exponential of the mean negative log-likelihood per token. "
) * 4
CODE = (
    "def add(a, b):\n    return a + b\n\n\nclass Box:\n    def __init__(self, x):\n        self.x = x\n\n"
    "    def get(self):\n        return self.x\n\nfor i in range(10):\n    print(add(i, i * 2))\n"
) * 4


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A small random GPT-2 with its own byte-level BPE, saved as a self-contained folder."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    from cptlab.model.base_model import train_tokenizer

    folder = tmp_path_factory.mktemp("model")
    tok = train_tokenizer([ENGLISH, CODE] * 3, vocab_size=400, max_length=64)
    torch.manual_seed(0)
    model = GPT2LMHeadModel(
        GPT2Config(
            vocab_size=len(tok),
            n_positions=64,
            n_embd=32,
            n_layer=2,
            n_head=2,
            resid_pdrop=0.0,
            embd_pdrop=0.0,
            attn_pdrop=0.0,
            bos_token_id=tok.eos_token_id,
            eos_token_id=tok.eos_token_id,
        )
    )
    model.save_pretrained(folder, safe_serialization=True)
    tok.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def model_and_tok(tiny_model_dir):
    from cptlab.data.sources import load_model, load_tokenizer

    return load_model(str(tiny_model_dir)).eval(), load_tokenizer(str(tiny_model_dir))


@pytest.fixture(scope="session")
def lab_run(tmp_path_factory) -> Path:
    """The four notebooks executed headless on the smoke preset by ``cptlab lab`` (what CI checks), a
    newcomer's first run on a fresh cache: plots saved, then the grader run as its own process, which
    writes the run's index.html. What the terminal showed is kept beside the run (``terminal.txt``)."""
    run = tmp_path_factory.mktemp("lab") / "run"
    env = {**os.environ, "CPTLAB_CACHE": str(tmp_path_factory.mktemp("fresh-cache"))}
    cmd = [sys.executable, "-c", "import sys; from cptlab.cli import main; sys.exit(main(sys.argv[1:]))"]
    proc = subprocess.run(
        [*cmd, "lab", "--preset", "smoke", "--out", str(run)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    (run.parent / "terminal.txt").write_text(proc.stdout)
    assert proc.returncode == 0, (
        f"`cptlab lab --preset smoke` exited {proc.returncode}: the solution notebooks lost points\n"
        + proc.stdout[-3000:]
    )
    return run


SLOW_FIXTURES = {"lab_run", "student_run"}
# The groups that take longest (minutes of one worker in CI, `--durations`), handed out first so the
# short ones fill in around them (`--no-loadscope-reorder` keeps this order; xdist's own puts the
# groups with the most tests first, which left the core-track class of one test to run alone at the end).
LONGEST_FIRST = (
    "the-executed-lab",
    "test_classroom.py",
    "test_gradescope.py",
    "test_slurm.py",
    "the-core-track-class",
    "test_notebooks.py",
    "test_exercises.py",
)


_GROUP = pytest.StashKey[str]()


@pytest.hookimpl(tryfirst=True)  # before xdist's own hook, which reads the groups into the test ids
def pytest_collection_modifyitems(config, items):
    """Every test that needs an executed lab is slow; the quick subset (`-m "not slow"`) skips it.
    Under pytest-xdist (`--dist loadgroup`) the tests that use the executed lab share one worker (it is
    built once), and the others of a file share one (a module's fixture, a graded class, runs once);
    the core-track class has its own, so the two graded classes run side by side."""
    for item in items:
        fixtures = set(getattr(item, "fixturenames", ()))
        if SLOW_FIXTURES & fixtures:
            item.add_marker(pytest.mark.slow)
        if "lab_run" in fixtures:
            group = "the-executed-lab"
        elif "graded_core" in fixtures:
            group = "the-core-track-class"
        else:
            group = item.path.name
        item.add_marker(pytest.mark.xdist_group(group))
        item.stash[_GROUP] = group
    rank = {g: k for k, g in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.stash[_GROUP], len(rank)))  # stable: files keep their order
