"""The same CPT loop on several processes (torchrun): DistributedDataParallel with NCCL on GPUs and
gloo on CPUs. Ranks draw the same global batch from the same seeded generator and each keeps its
own share, so N processes follow the single-process loss curve at the same global batch."""

from __future__ import annotations

import atexit
import os
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


def _dist():
    """torch.distributed, if anything imported it: a process with no torch has no process group,
    and the lab's light processes (the notebook executor, the CLI) ask without importing torch."""
    return sys.modules.get("torch.distributed")


def is_distributed() -> bool:
    dist = _dist()
    return dist is not None and dist.is_available() and dist.is_initialized()


def rank() -> int:
    return _dist().get_rank() if is_distributed() else 0


def world_size() -> int:
    return _dist().get_world_size() if is_distributed() else 1


def is_main() -> bool:
    return rank() == 0


def init_from_env() -> bool:
    """Start the process group when launched by torchrun (WORLD_SIZE > 1); a no-op otherwise."""
    if is_distributed() or int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return is_distributed()
    import torch
    import torch.distributed as dist

    backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend=backend)
    # Without this, gloo's worker threads can outlive the interpreter and abort the process at exit
    # ("terminate called without an active exception", pytorch/pytorch#190489).
    atexit.register(shutdown)
    return True


def shutdown() -> None:
    """Destroy the process group (a no-op when there is none)."""
    if is_distributed():
        _dist().destroy_process_group()


def device_for_rank(device: torch.device) -> torch.device:
    import torch

    if device.type == "cuda" and is_distributed():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return device


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    if is_distributed():
        _dist().all_reduce(t, op=_dist().ReduceOp.SUM)
    return t


def barrier() -> None:
    if is_distributed():
        _dist().barrier()
