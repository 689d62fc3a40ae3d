"""Tokens/s and MFU of the cptlab CPT loop on a GPT-2 124M-shaped model (random weights).

MFU uses nanoGPT's estimate: 6N + 12 L H Q T FLOPs per token, against the card's dense bf16 peak.
"""
import json
import time

import numpy as np
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from cptlab.config import get_config
from cptlab.device import autocast_dtype, pick_device
from cptlab.train import train

PEAK = {"H100": 989e12, "H200": 989e12, "A100": 312e12}


def main():
    device = pick_device("auto")
    torch.backends.cuda.matmul.allow_tf32 = True
    name = torch.cuda.get_device_name() if device.type == "cuda" else "cpu"
    peak = next((v for k, v in PEAK.items() if k in name), None)
    results = []
    for batch in (16, 64):
        cfg = get_config("gpt2", batch_size=batch, max_steps=30, warmup_steps=3, device=device.type)
        model = GPT2LMHeadModel(GPT2Config(n_positions=1024, attn_implementation="sdpa")).to(device)
        stream = np.random.default_rng(0).integers(0, 50257, 2_000_000).astype(np.uint16)
        train(model, stream, cfg.replace(max_steps=5), device, autocast_dtype(device), progress=False)  # warm-up
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        res = train(model, stream, cfg, device, autocast_dtype(device), progress=False)
        if device.type == "cuda":
            torch.cuda.synchronize()
        secs = time.perf_counter() - t0
        n = sum(p.numel() for p in model.parameters()) - model.transformer.wpe.weight.numel()
        c = model.config
        flops_per_token = 6 * n + 12 * c.n_layer * c.n_head * (c.n_embd // c.n_head) * cfg.block_size
        tps = res.tokens / secs
        row = {"device": name, "batch": batch, "block": cfg.block_size, "tokens_per_s": tps,
               "mfu": tps * flops_per_token / peak if peak else None, "final_loss": res.log[-1]["loss"]}
        print(json.dumps(row), flush=True)
        results.append(row)
        del model
        torch.cuda.empty_cache() if device.type == "cuda" else None
    return results


if __name__ == "__main__":
    main()
