"""The Gradescope autograder: the zip the command builds, and its run_autograder run as the harness
runs it (from the root, the submission in submission/, results in results/results.json), with the
root pointed at a temp folder: the solutions get every point of the track, a learner with one
mistake loses that question only, an empty submission gets 0 and is told what to upload."""

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import nbformat
import pytest
from learner_sources import MEAN_OF_PPL

from checkers.core.questions import GRADED_TRACKS, QUESTIONS, track_points
from checkers.grading.find_notebooks import find_notebooks
from checkers.grading.grade import main
from cptlab.core.results import STEP_NOTEBOOKS
from cptlab.notebook.execute import SOLUTION_DIR

TRACK = "core"
# The fields of results.json and of each test, per Gradescope's autograder specification.
TOP_FIELDS = {"score", "execution_time", "output", "visibility", "stdout_visibility", "tests"}
TEST_FIELDS = {"name", "score", "max_score", "output", "visibility"}
VISIBILITY = {"hidden", "after_due_date", "after_published", "visible"}


@pytest.fixture(scope="module")
def autograder(tmp_path_factory):
    out = tmp_path_factory.mktemp("zip") / "autograder.zip"
    assert main(["gradescope", "--preset", "smoke", "--track", TRACK, "--out", str(out)]) == 0
    return out


def _root(tmp: Path, zip_path: Path, books: dict[str, object]) -> Path:
    """An /autograder as the harness lays it out: source/ unpacked, run_autograder copied, submission/."""
    root = tmp / "autograder"
    with zipfile.ZipFile(zip_path) as z:
        z.extractall(root / "source")
    (root / "run_autograder").write_bytes((root / "source" / "run_autograder").read_bytes())
    (root / "run_autograder").chmod(0o755)
    for rel, nb in books.items():
        (root / "submission" / rel).parent.mkdir(parents=True, exist_ok=True)
        nbformat.write(nb, root / "submission" / rel)
    (root / "submission").mkdir(exist_ok=True)
    return root


def _start(root: Path) -> subprocess.Popen:
    env = {**os.environ, "AUTOGRADER_ROOT": str(root), "AUTOGRADER_PYTHON": sys.executable}
    return subprocess.Popen(
        [str(root / "run_autograder")], cwd=root, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


def _results(root: Path, proc: subprocess.Popen) -> dict:
    out, _ = proc.communicate(timeout=1500)
    assert proc.returncode == 0, out[-3000:]
    results = json.loads((root / "results" / "results.json").read_text())
    assert TOP_FIELDS <= set(results), set(results)
    assert isinstance(results["execution_time"], int) and results["visibility"] in VISIBILITY
    for t in results["tests"]:
        assert (
            TEST_FIELDS <= set(t)
            and t["visibility"] in VISIBILITY
            and 0 <= t["score"] <= t["max_score"]
            or (t["max_score"] == 0 == t["score"])
        ), t
    assert results["score"] == pytest.approx(sum(t["score"] for t in results["tests"]))
    return results


def _solutions():
    return {n: nbformat.read(SOLUTION_DIR / n, as_version=4) for n in STEP_NOTEBOOKS.values()}


def test_the_zip_holds_setup_and_run_autograder_at_its_root_and_no_solution(autograder):
    with zipfile.ZipFile(autograder) as z:
        names = set(z.namelist())
        modes = {i.filename: i.external_attr >> 16 for i in z.infolist()}
        settings = json.loads(z.read("cptlab_autograder.json"))
    assert {"setup.sh", "run_autograder", "pyproject.toml"} <= names
    assert modes["setup.sh"] & 0o111 and modes["run_autograder"] & 0o111
    assert {f"notebooks/{n}" for n in STEP_NOTEBOOKS.values()} <= names
    assert not any(n.startswith(("notebooks/solutions", "notebooks/src")) or n.endswith("RUBRIC.md") for n in names)
    assert settings == {"preset": "smoke", "track": TRACK}


def test_the_matcher_finds_each_step_at_any_depth_under_any_name(tmp_path):
    for step, (name, nb) in enumerate(_solutions().items(), start=1):
        folder = tmp_path / "my work" / ("part-a" if step % 2 else "b")
        folder.mkdir(parents=True, exist_ok=True)
        nbformat.write(nb, folder / f"copy of lab {5 - step} (final).ipynb")
    (tmp_path / ".ipynb_checkpoints").mkdir()
    nbformat.write(_solutions()[STEP_NOTEBOOKS[1]], tmp_path / ".ipynb_checkpoints" / "01_baseline-checkpoint.ipynb")
    (tmp_path / "notes.ipynb").write_text("not json")
    found, notes = find_notebooks(tmp_path)
    assert sorted(found) == [1, 2, 3, 4]
    for step, path in found.items():
        assert nbformat.read(path, as_version=4).cells[0].source == _solutions()[STEP_NOTEBOOKS[step]].cells[0].source
    assert notes == ["notes.ipynb: not recognised as one of the lab's notebooks, or a second copy of a step"]


@pytest.mark.slow
def test_run_autograder_grades_the_solutions_one_mistake_and_an_empty_submission(autograder, tmp_path):
    sols = _solutions()
    nested = {f"lab/step {i}/{name.replace('_', ' ')}": nb for i, (name, nb) in enumerate(sols.items(), start=1)}
    wrong = _solutions()
    cell = next(
        c for c in wrong[STEP_NOTEBOOKS[1]].cells if "def corpus_perplexity(" in c.source and c.cell_type == "code"
    )
    cell.source = MEAN_OF_PPL
    roots = [_root(tmp_path / "ok", autograder, nested), _root(tmp_path / "one", autograder, wrong)]
    procs = [_start(r) for r in roots]  # the two gradings side by side
    empty = _root(tmp_path / "empty", autograder, {})
    (empty / "submission" / "README.txt").write_text("forgot to attach")
    nothing = _results(empty, _start(empty))
    ok, one = (_results(r, p) for r, p in zip(roots, procs))

    assert nothing["score"] == 0 and nothing["tests"] == [] and "Upload your four step notebooks" in nothing["output"]

    graded = [q for q in QUESTIONS.values() if q.track in GRADED_TRACKS[TRACK]]
    assert len(ok["tests"]) == len(graded)
    auto = {t["name"].split()[0]: t for t in ok["tests"] if t["max_score"] > 0}
    assert ok["score"] == track_points("core", "auto") == 91, [t for t in ok["tests"] if t["score"] < t["max_score"]]
    assert all(t["status"] == "passed" for t in auto.values())
    written = [t for t in ok["tests"] if t["max_score"] == 0]
    assert [t["name"].split()[0] for t in written] == ["W4"] and "Graded by hand" in written[0]["output"]
    assert "1.1" in auto and "PASS" in auto["1.1"]["output"]
    assert "graded as 01_baseline.ipynb" in ok["output"]

    lost = {t["name"].split()[0]: t for t in one["tests"] if t["score"] < t["max_score"]}
    assert list(lost) == ["1.1"], lost
    assert lost["1.1"]["score"] <= 6 and "mistake: a mean of per-window perplexities" in lost["1.1"]["output"]
    assert one["score"] == pytest.approx(91 - (18 - lost["1.1"]["score"]))
