"""Tokens/s and MFU of the cptlab CPT loop on a GPT-2 124M-shaped model (random weights: the GPU
machine has no hub access, and speed does not depend on the values), eager and compiled, against
a default `transformers.Trainer` (fp32, as it ships) on the same model, data, batch and steps.

MFU uses nanoGPT's estimate (``cptlab.speed.flops``): 6N + 12 L d T FLOPs per token, against the card's dense bf16 peak.
"""

import json
import sys
import tempfile
import time

import numpy as np
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from cptlab.core.config import get_config
from cptlab.model.train import train
from cptlab.speed.device import autocast_dtype, pick_device
from cptlab.speed.flops import device_peak, flops_per_token

STEPS, BATCH = 30, 64


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def ours(device, stream, compile_: bool, **overrides):
    cfg = get_config(
        "gpt2",
        batch_size=BATCH,
        max_steps=STEPS,
        warmup_steps=3,
        device=device.type,
        torch_compile=compile_,
        **overrides,
    )
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(attn_implementation="sdpa")).to(device)
    t0 = time.perf_counter()
    train(
        model, stream, cfg.replace(max_steps=5), device, autocast_dtype(device), progress=False
    )  # warm-up (and compile)
    sync(device)
    warm = time.perf_counter() - t0
    t0 = time.perf_counter()
    res = train(model, stream, cfg, device, autocast_dtype(device), progress=False)
    sync(device)
    secs = time.perf_counter() - t0
    return res.tokens / secs, warm, res.log[-1]["loss"], flops_per_token(model, cfg.block_size)


def hf_trainer(device, stream):
    from datasets import Dataset
    from transformers import Trainer, TrainingArguments

    torch.backends.cuda.matmul.allow_tf32 = False  # as a default Trainer run has it
    blocks = stream[: (STEPS + 5) * BATCH * 256].astype(np.int64).reshape(-1, 256)
    ds = Dataset.from_dict({"input_ids": blocks.tolist(), "labels": blocks.tolist()})
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config()).to(device)

    def run(steps):
        args = TrainingArguments(
            output_dir=tempfile.mkdtemp(),
            per_device_train_batch_size=BATCH,
            max_steps=steps,
            learning_rate=5e-5,
            warmup_steps=3,
            lr_scheduler_type="cosine",
            max_grad_norm=1.0,
            logging_strategy="no",
            save_strategy="no",
            report_to=[],
            disable_tqdm=True,
        )
        t0 = time.perf_counter()
        Trainer(model=model, args=args, train_dataset=ds).train()
        sync(device)
        return time.perf_counter() - t0

    run(5)
    return STEPS * BATCH * 255 / run(STEPS)


def main():
    device = pick_device("auto")
    name = torch.cuda.get_device_name() if device.type == "cuda" else "cpu"
    peak = device_peak(device, autocast_dtype(device))[0] if device.type == "cuda" else None
    stream = np.random.default_rng(0).integers(0, 50257, 4_000_000).astype(np.uint16)
    rows = {}
    variants = {  # the first: plain cross-entropy and a host sync every step, the slow reference
        "cptlab_eager_unfused_sync_every_step": (False, {"fused_ce": False, "log_every": 1}),
        "cptlab_eager": (False, {}),
        "cptlab_compiled_unfused": (True, {"fused_ce": False}),
        "cptlab_compiled": (True, {}),
    }
    # compiling the plain cross-entropy took 216 s on an H100 for 165k tokens/s: run it only by name
    only = [a for a in sys.argv[1:] if not a.startswith("--")] or [
        k for k in variants if k != "cptlab_compiled_unfused"
    ]
    for label, (comp, overrides) in variants.items():
        if label not in only:
            continue
        try:
            torch.cuda.reset_peak_memory_stats() if device.type == "cuda" else None
            tps, warm, loss, fpt = ours(device, stream, comp, **overrides)
            mem = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else None
            rows[label] = {
                "tokens_per_s": tps,
                "mfu": tps * fpt / peak if peak else None,
                "warmup_s": warm,
                "final_loss": loss,
                "peak_mem_gib": mem,
            }
        except Exception as e:  # one failing variant must not hide the others' figures
            rows[label] = {"tokens_per_s": 0.0, "error": f"{type(e).__name__}: {e}"[:500]}
        print(json.dumps({label: rows[label]}), flush=True)
    if "--no-trainer" in sys.argv:
        return
    rows["hf_trainer_default"] = {"tokens_per_s": hf_trainer(device, stream)}
    print(json.dumps({"hf_trainer_default": rows["hf_trainer_default"]}), flush=True)
    best = max(r["tokens_per_s"] for k, r in rows.items() if k.startswith("cptlab"))
    out = {
        "device": name,
        "batch": BATCH,
        "block": 256,
        "steps": STEPS,
        **rows,
        "train_speedup_vs_hf_trainer_eager": rows["cptlab_eager"]["tokens_per_s"]
        / rows["hf_trainer_default"]["tokens_per_s"],
        "train_speedup_vs_hf_trainer_best": best / rows["hf_trainer_default"]["tokens_per_s"],
    }
    print(json.dumps(out))


if __name__ == "__main__":
    main()
