"""On-disk caches (tiny base model, token arrays): one root that an environment variable moves."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

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
