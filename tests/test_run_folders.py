"""Runs are never lost: a folder that holds a run is not overwritten without --force, one run at a
time holds the folder, a finished run says so on --resume, and a kill between a results file and
its manifest update is repaired on --resume into a run that passes --verify."""

import json

import pytest

from checkers.verify.verify import verify
from cptlab.cli import main
from cptlab.core import results
from cptlab.core.config import get_config
from cptlab.lab.pipeline import RunFinished, RunFolderError, locked, run_all

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    run = tmp_path_factory.mktemp("finished") / "run"
    assert main(["run", "--preset", "smoke", "--out", str(run), "--quiet", "--no-study"]) == 0
    return run


def test_a_plain_run_into_a_finished_folder_is_refused(finished, capsys):
    before = (finished / "step1_baseline.json").read_text()
    assert main(["run", "--preset", "smoke", "--out", str(finished), "--quiet", "--no-study"]) == 2
    assert "already holds a run: --resume continues it, --force starts it over" in capsys.readouterr().err
    assert (finished / "step1_baseline.json").read_text() == before


def test_resume_on_a_finished_run_says_it_is_finished(finished, capsys):
    log = json.loads((finished / "step3_cpt.json").read_text())["log"]
    assert main(["run", "--preset", "smoke", "--out", str(finished), "--quiet", "--no-study", "--resume"]) == 0
    assert "is finished: nothing to resume" in capsys.readouterr().out
    assert json.loads((finished / "step3_cpt.json").read_text())["log"] == log  # not retrained


def test_two_runs_in_one_folder_are_refused(tmp_path):
    with locked(tmp_path):
        with pytest.raises(RunFolderError, match="in use by another cptlab run"):
            run_all(get_config("smoke"), tmp_path, progress=False, study=False)


def test_a_kill_between_results_and_manifest_is_repaired_on_resume(tmp_path, monkeypatch):
    cfg = get_config("smoke")
    real = results.update_manifest
    calls = []

    def killed_after_step3(run_dir):
        if (tmp_path / "run" / "step3_cpt.json").exists() and not calls:
            calls.append(1)
            raise KeyboardInterrupt  # step 3's results are written, the manifest is not
        return real(run_dir)

    monkeypatch.setattr(results, "update_manifest", killed_after_step3)
    with pytest.raises(KeyboardInterrupt):
        run_all(cfg, tmp_path / "run", progress=False, study=False)
    monkeypatch.setattr(results, "update_manifest", real)
    assert "step3_cpt.json" not in json.loads((tmp_path / "run" / "manifest.json").read_text())["files"]
    run_all(cfg, tmp_path / "run", progress=False, study=False, resume=True)
    report = verify(tmp_path / "run")
    assert report.passed, str(report)
    with pytest.raises(RunFinished):
        run_all(cfg, tmp_path / "run", progress=False, study=False, resume=True)


def test_force_starts_over(finished, tmp_path):
    import shutil

    run = tmp_path / "again"
    shutil.copytree(finished, run)
    old = json.loads((run / "step1_baseline.json").read_text())["run_id"]
    run_all(get_config("smoke"), run, progress=False, study=False, force=True)
    assert json.loads((run / "step1_baseline.json").read_text())["run_id"] != old
