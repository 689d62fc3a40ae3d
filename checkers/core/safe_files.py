"""Reading what a learner hands in without trusting it: only regular files inside the run folder
(no symlinks out, no devices, no FIFOs), read up to a size cap, JSON parsed with its nesting
capped. Every refusal says what was wrong, so a check can fail with it."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import Any

from cptlab.core.files import sha256_file

MAX_JSON_BYTES = 32 << 20
MAX_HASH_BYTES = 4 << 30


class Unsafe(ValueError):
    """A path or file the grader refuses to read."""


def inside(run_dir: str | Path, rel: str | Path) -> Path:
    """``rel`` as a regular file inside ``run_dir``: relative, no component a symlink, not a device
    or FIFO. Raises ``Unsafe`` (or FileNotFoundError when it is simply not there)."""
    root = Path(run_dir)
    rel = Path(rel)
    if rel.is_absolute() or ".." in rel.parts:
        raise Unsafe(f"{rel} points outside the run folder")
    cur = root
    for part in rel.parts:
        cur = cur / part
        try:
            st = os.lstat(cur)
        except FileNotFoundError:
            raise FileNotFoundError(f"{rel} not found in {root}") from None
        if stat.S_ISLNK(st.st_mode):
            raise Unsafe(f"{rel} is or passes through a symbolic link ({cur.name})")
    if not stat.S_ISREG(st.st_mode):
        kind = (
            "a folder"
            if stat.S_ISDIR(st.st_mode)
            else "a FIFO"
            if stat.S_ISFIFO(st.st_mode)
            else "a device or special file"
        )
        raise Unsafe(f"{rel} is {kind}, not a regular file")
    return cur


def read_json(run_dir: str | Path, rel: str | Path, max_bytes: int = MAX_JSON_BYTES) -> Any:
    path = inside(run_dir, rel)
    with open(path, "rb") as fh:
        raw = fh.read(max_bytes + 1)
    if len(raw) > max_bytes:
        raise Unsafe(f"{Path(rel).name} is larger than {max_bytes >> 20} MB")
    try:
        return json.loads(raw.decode("utf-8"))
    except RecursionError:
        raise Unsafe(f"{Path(rel).name} is nested too deeply to be a results file") from None


def sha256(run_dir: str | Path, rel: str | Path, max_bytes: int = MAX_HASH_BYTES) -> str:
    path = inside(run_dir, rel)
    if path.stat().st_size > max_bytes:
        raise Unsafe(f"{rel} is larger than {max_bytes >> 30} GB")
    return sha256_file(path)


def safetensors_header(run_dir: str | Path, rel: str | Path) -> dict:
    """The JSON header of a safetensors file (8-byte length, then JSON): what makes it weights."""
    path = inside(run_dir, rel)
    size = path.stat().st_size
    with open(path, "rb") as fh:
        head = fh.read(8)
        n = int.from_bytes(head, "little") if len(head) == 8 else -1
        if not 0 < n <= min(size - 8, 100 << 20):
            raise Unsafe(f"{Path(rel).name} is not a safetensors file")
        try:
            header = json.loads(fh.read(n).decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
            raise Unsafe(f"{Path(rel).name} is not a safetensors file") from None
    if not isinstance(header, dict) or not any(isinstance(v, dict) and "dtype" in v for v in header.values()):
        raise Unsafe(f"{Path(rel).name} holds no tensors")
    return header
