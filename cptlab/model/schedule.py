"""The recipe's learning-rate schedule: linear warm-up, then a half cosine."""

from __future__ import annotations

import math


def lr_multiplier(step: int, warmup_steps: int, max_steps: int, min_lr_ratio: float = 0.0) -> float:
    """The schedule of ``transformers.get_cosine_schedule_with_warmup`` (0.5 cycle), optionally
    floored at ``min_lr_ratio``. Optimizer step k (1-based) uses ``lr_multiplier(k)``, so the
    warm-up peaks exactly at step ``warmup_steps`` and the last step reaches the floor."""
    if step < warmup_steps:
        return step / max(1, warmup_steps)
    progress = (step - warmup_steps) / max(1, max_steps - warmup_steps)
    cosine = max(0.0, 0.5 * (1.0 + math.cos(math.pi * progress)))
    return min_lr_ratio + (1.0 - min_lr_ratio) * cosine
