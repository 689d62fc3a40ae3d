"""Writing and hashing files, one way each: a new file is written beside its target under a
temporary name, flushed to disk, then renamed over it, so a reader (a grader, a resumed run, a
browser) never sees half a file; a folder is built the same way; sha256 reads in chunks."""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from cptlab.core.distributed import is_main


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """A temporary path beside ``path`` with the same suffix (writers that go by the suffix, as
    ``np.save`` and ``savefig``, keep working); renamed into place, fsynced, only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=path.suffix or ".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_atomic(path: str | os.PathLike, data: str | bytes) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data.encode("utf-8") if isinstance(data, str) else data)
    return Path(path)


@contextmanager
def build_lock(final: str | os.PathLike) -> Iterator[None]:
    """One builder at a time for a cached folder, across processes (parallel test workers, a class
    graded with several jobs): the others wait, then find it built. An advisory lock on a file beside it."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    with open(final.parent / f".{final.name}.lock", "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


@contextmanager
def atomic_dir(final: str | os.PathLike) -> Iterator[Path]:
    """A temporary folder beside ``final``, marked complete and renamed into place only if the block
    succeeds (under torchrun only rank 0 renames; the others computed the same in memory)."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=final.parent))
    try:
        yield tmp
        if not is_main():
            return
        write_atomic(tmp / ".complete", "ok\n")
        if final.exists():
            shutil.rmtree(final, ignore_errors=True)
        try:
            os.replace(tmp, final)
        except OSError:
            if not is_complete(final):  # another process (a torchrun rank) finished it first: keep theirs
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def link_atomic(link: str | os.PathLike, target: str) -> Path:
    """Point the symlink ``link`` at ``target`` (relative to the link's folder), replacing any old
    link in one rename, so ``runs/latest`` always names a whole run folder."""
    link = Path(link)
    tmp = link.with_name(f".{link.name}.{os.getpid()}")
    tmp.unlink(missing_ok=True)
    tmp.symlink_to(target)
    os.replace(tmp, link)
    return link


def is_complete(folder: str | os.PathLike) -> bool:
    return (Path(folder) / ".complete").is_file()


def sha256_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
