"""Memory caps that fit the machine: --jobs learners at once never ask for more than it holds."""

import pytest

from checkers.grading import machine_limits as M
from checkers.grading.machine_limits import GiB, MemoryCapError, memory_caps, over_memory


def test_two_jobs_on_24_gib_cap_each_notebook_under_12_gib():
    caps = memory_caps(2, machine=24 * GiB)
    assert caps.notebook < 12 * GiB and 2 * caps.notebook + M.reserve(24 * GiB) <= 24 * GiB
    assert caps.check == 4 * GiB and "per notebook" in caps.describe()
    assert memory_caps(1, machine=24 * GiB).notebook == 16 * GiB  # one job: the usual 16 GiB fits
    assert memory_caps(8, machine=24 * GiB).check < 4 * GiB  # eight at once: the check's cap shrinks too
    for jobs in (1, 2, 3, 4, 6):
        c = memory_caps(jobs, machine=24 * GiB)
        assert jobs * max(c.notebook, c.check) + M.reserve(24 * GiB) <= 24 * GiB


def test_a_cap_above_the_machines_share_is_refused_unless_forced():
    with pytest.raises(
        MemoryCapError, match=r"--notebook-memory 16 GiB with --jobs 2.*--notebook-memory 10\.8 or less"
    ):
        memory_caps(2, notebook=16 * GiB, machine=24 * GiB)
    assert memory_caps(2, notebook=16 * GiB, machine=24 * GiB, force=True).notebook == 16 * GiB
    assert memory_caps(2, notebook=8 * GiB, machine=24 * GiB).notebook == 8 * GiB  # asked, and it fits
    with pytest.raises(MemoryCapError, match="use fewer --jobs"):
        memory_caps(64, machine=24 * GiB)


def test_grade_class_refuses_the_cap_before_grading_anyone(tmp_path, monkeypatch, capsys):
    from checkers.grading.grade import main

    monkeypatch.setattr(M, "machine_memory", lambda: 24 * GiB)
    (tmp_path / "sub" / "ada").mkdir(parents=True)
    code = main(
        ["grade-class", str(tmp_path / "sub"), "--out", str(tmp_path / "out"), "--jobs", "2", "--notebook-memory", "16"]
    )
    assert code == 2 and "--force-memory" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_a_learner_out_of_its_address_space_is_named():
    msg = "MemoryError: Unable to allocate 34.0 GiB for an array with shape (36507222016,) and data type uint8"
    assert over_memory(msg, 10 * GiB).startswith("over its memory limit (10.0 GiB of address space): MemoryError")
    assert over_memory("RuntimeError: DefaultCPUAllocator: can't allocate memory", 4 * GiB)
    assert over_memory("NameError: name 'x' is not defined", 4 * GiB) is None
