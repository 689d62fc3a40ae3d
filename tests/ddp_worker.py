"""Run by torchrun in test_distributed.py: the CPT loop and the evaluator under DDP (gloo, CPU)."""

import json
import sys

import numpy as np
import torch

from cptlab.core.config import get_config
from cptlab.core.distributed import init_from_env, is_main, shutdown, world_size
from cptlab.data.sources import load_model
from cptlab.model.perplexity import perplexity
from cptlab.model.train import train


def main(model_dir: str, out: str, overrides: str = "{}") -> None:
    assert init_from_env() and world_size() == 2
    torch.manual_seed(0)
    model = load_model(model_dir)
    stream = np.random.default_rng(0).integers(0, 300, 6000).astype(np.uint16)
    cfg = get_config(
        "smoke",
        block_size=16,
        batch_size=4,
        grad_accum=2,
        max_steps=8,
        warmup_steps=2,
        cpt_lr=1e-3,
        seed=5,
        device="cpu",
        **json.loads(overrides),
    )
    log = train(model, stream, cfg, torch.device("cpu"), progress=False).log
    res = perplexity(model, stream[:3000], 16, stride=None, batch_size=3)
    if is_main():
        with open(out, "w") as fh:
            json.dump(
                {
                    "log": log,
                    "ppl": res.ppl,
                    "nll_sum": res.nll_sum,
                    "tokens": res.tokens,
                    "params": {n: p.detach().flatten()[:50].tolist() for n, p in model.named_parameters()},
                },
                fh,
            )
    shutdown()


if __name__ == "__main__":
    main(*sys.argv[1:])
