"""grade-class judges its learners in threads of one process."""

from concurrent.futures import ThreadPoolExecutor

import pytest

pytestmark = pytest.mark.slow  # seconds: 24 probe runs and 24 models


def test_references_built_in_grader_threads_at_once_are_those_built_alone():
    """grade-class grades learners in threads of one process: the references its checks build there
    (seeded models, the probe run's dropout masks) must not depend on another learner's check running
    beside them (torch's global generator and thread count are the process's)."""
    from checkers.code.harness import tiny_gpt2
    from checkers.code.loop import _reference_trace

    cfg = {
        "max_steps": 7,
        "warmup_steps": 2,
        "cpt_lr": 0.03,
        "curve_every": 3,
        "retention_floor": 1.05,
        "grad_clip": 0.5,
        "stop_at_floor": False,
    }
    above = {s: 1.2 for s in range(8)}

    def job(seed):
        losses = [e["loss"] for e in _reference_trace(seed, cfg, above)["log"]]
        return losses, tiny_gpt2(seed).transformer.wte.weight.sum().item()

    seeds = list(range(1, 13))
    alone = [job(s) for s in seeds]
    with ThreadPoolExecutor(max_workers=4) as pool:
        together = list(pool.map(job, seeds))
    assert together == alone
