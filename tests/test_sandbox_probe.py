"""A bubblewrap that is installed but cannot make its namespaces (a container without the
privilege) is not used: the notebooks still run, without the sandbox, and the gradebook says so."""

import shutil

from checkers.grading import sandbox as S


def test_an_unusable_bwrap_is_left_out_and_a_working_one_kept(tmp_path, monkeypatch):
    broken = tmp_path / "bwrap"
    broken.write_text("#!/bin/sh\necho 'bwrap: Creating new namespace failed: Operation not permitted' >&2\nexit 1\n")
    broken.chmod(0o755)
    monkeypatch.setattr(S.shutil, "which", lambda name: str(broken) if name == "bwrap" else shutil.which(name))
    S.usable_bwrap.cache_clear()
    try:
        assert S.usable_bwrap() is None
        assert S.Sandbox().name.startswith("none")
        working = tmp_path / "ok" / "bwrap"
        working.parent.mkdir()
        working.write_text('#!/bin/sh\nwhile [ "$1" != true ]; do shift; done\nexit 0\n')
        working.chmod(0o755)
        monkeypatch.setattr(S.shutil, "which", lambda name: str(working) if name == "bwrap" else shutil.which(name))
        S.usable_bwrap.cache_clear()
        assert S.usable_bwrap() == str(working) and S.Sandbox().name.startswith("bwrap")
    finally:
        S.usable_bwrap.cache_clear()
