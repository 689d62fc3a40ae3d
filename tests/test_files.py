"""The one atomic writer: a failed write leaves the old file whole and no temporary behind; writers
that go by the suffix (np.save, savefig) write where they are told; the hash matches hashlib's."""

import hashlib

import numpy as np
import pytest

from cptlab.core.files import atomic_dir, atomic_path, link_atomic, sha256_file, write_atomic


def test_a_failed_write_keeps_the_old_file_and_leaves_nothing(tmp_path):
    target = write_atomic(tmp_path / "a.json", "old\n")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("disk gone")
    assert target.read_text() == "old\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json"]


def test_np_save_keeps_the_target_name(tmp_path):
    with atomic_path(tmp_path / "blocks.npy") as tmp:
        np.save(tmp, np.arange(5), allow_pickle=False)
    assert np.load(tmp_path / "blocks.npy").tolist() == [0, 1, 2, 3, 4]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["blocks.npy"]


def test_sha256_file_matches_hashlib_across_chunks(tmp_path):
    data = bytes(range(256)) * 9000  # over two 1 MiB chunks
    path = write_atomic(tmp_path / "w.bin", data)
    assert sha256_file(path) == hashlib.sha256(data).hexdigest()


def test_latest_link_moves_in_one_rename_and_leaves_no_temporary(tmp_path):
    (tmp_path / "run-1").mkdir()
    (tmp_path / "run-2").mkdir()
    link_atomic(tmp_path / "latest", "run-1")
    link_atomic(tmp_path / "latest", "run-2")
    assert (tmp_path / "latest").resolve() == (tmp_path / "run-2").resolve()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["latest", "run-1", "run-2"]


def test_a_failed_folder_keeps_the_old_one_whole(tmp_path):
    with atomic_dir(tmp_path / "release") as tmp:
        (tmp / "a.txt").write_text("first")
    with pytest.raises(RuntimeError):
        with atomic_dir(tmp_path / "release") as tmp:
            (tmp / "b.txt").write_text("half")
            raise RuntimeError("copy failed")
    assert (tmp_path / "release" / "a.txt").read_text() == "first"
    assert not (tmp_path / "release" / "b.txt").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["release"]
