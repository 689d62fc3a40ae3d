"""On-disk caches (tiny base model, token arrays): one root that an environment variable moves."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path

from cptlab.core.distributed import is_main

ENV_VAR = "CPTLAB_CACHE"


def cache_root() -> Path:
    root = os.environ.get(ENV_VAR) or os.path.join(
        os.environ.get("XDG_CACHE_HOME", str(Path.home() / ".cache")), "cptlab"
    )
    return Path(root)


def fingerprint(*parts) -> str:
    h = hashlib.sha256()
    for p in parts:
        if isinstance(p, (bytes, bytearray)):
            h.update(p)
        elif isinstance(p, str):
            h.update(p.encode())
        else:
            h.update(json.dumps(p, sort_keys=True, default=str).encode())
        h.update(b"\x1f")
    return h.hexdigest()[:16]


@contextmanager
def atomic_dir(final: Path):
    """Yield a temporary folder beside ``final``; rename it into place only if the block succeeds."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=final.parent))
    try:
        yield tmp
        if not is_main():  # under torchrun only rank 0 writes; the others computed the same in memory
            return
        (tmp / ".complete").write_text("ok\n")
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


def is_complete(folder: Path) -> bool:
    return (Path(folder) / ".complete").exists()
