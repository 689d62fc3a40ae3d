"""`make bench`: cptlab against the usual tools, side by side in one run, on this machine.

Every figure is a ratio of two measurements on the same model, data, batch, steps and precision
(the tiny preset's model on the CPU; ``--precision``, by default the one the lab picks here: bf16
autocast on a CPU with native bf16, else fp32). Training and evaluation run each side in its own
worker process with its own set-up, as it runs for real: cptlab's (threads, and glibc keeping freed
blocks for reuse, ``cptlab.speed.device.setup_cpu``) and the baseline's (the same threads, the allocator
as shipped). The two workers are timed alternately (ABBA), so machine noise hits both sides. Median
of several repeats; min and max are printed too. Writes bench.json in the run folder.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from cptlab.core.config import get_config
from cptlab.data.corpus import encode_documents, pack, stream_dtype, to_blocks
from cptlab.data.sources import load_documents, load_model, load_tokenizer
from cptlab.model.measure import code_corpus, resolve_base_model
from cptlab.model.perplexity import perplexity
from cptlab.model.train import train
from cptlab.speed.device import autocast_dtype, cpu_has_native_bf16, setup_cpu, setup_threads


def timed(fn) -> dict:
    t0 = time.perf_counter()
    fn()
    return {"seconds": time.perf_counter() - t0}


def paired(ours: Callable[[], dict], theirs: Callable[[], dict], repeats: int) -> tuple[list[dict], list[dict]]:
    """Run both sides alternately (ABBA order), so a drift in the machine's speed hits both alike.
    Each call answers a dict with its ``seconds``."""
    a, b = [], []
    for i in range(repeats):
        if i % 2 == 0:
            a.append(ours())
            b.append(theirs())
        else:
            b.append(theirs())
            a.append(ours())
    return a, b


def stats(amount: int, runs: list[dict]) -> dict:
    rates = [amount / r["seconds"] for r in runs]
    return {"median": statistics.median(rates), "min": min(rates), "max": max(rates)}


# ----------------------------------------------------------------------------- the two sides
CPU = torch.device("cpu")
EVAL_TOKENS = 16_384
TARGETS = {
    "train_speedup_vs_hf_trainer": 1.3,
    "eval_speedup_vs_reference": 1.5,
}  # the CPU targets the bench reports against
MARK = "@@bench "  # the workers' answers; anything else on their stdout (the Trainer's own prints) is skipped


def load_lab(precision: str):
    cfg = get_config("tiny", precision=precision)
    amp = autocast_dtype(CPU, cfg.precision)
    base = resolve_base_model(cfg)
    tok, model = load_tokenizer(base), load_model(base).eval()
    corpus, _ = code_corpus(cfg, tok)
    return cfg, amp, base, tok, model, corpus


def reference_ppl(model, ids: np.ndarray, block: int, amp: torch.dtype | None = None) -> tuple[float, int]:
    """The loop of Hugging Face's "Perplexity of fixed-length models" guide, stride = block."""
    x_all = torch.as_tensor(ids, dtype=torch.long)[None]
    nll, count = 0.0, 0
    with torch.no_grad(), torch.autocast("cpu", dtype=amp or torch.bfloat16, enabled=amp is not None):
        for begin in range(0, x_all.shape[1], block):
            x = x_all[:, begin : begin + block]
            if x.shape[1] < 2:
                break
            loss = model(x, labels=x).loss
            n = x.shape[1] - 1
            nll += float(loss) * n
            count += n
    return nll, count


def jobs(side: str, cfg, amp, model, corpus, steps: int) -> dict:
    """What one side runs: ``train`` (``steps`` optimizer steps from the base model) and ``eval``
    (perplexity of the first 16k validation tokens in 256-token windows)."""
    tcfg = cfg.replace(max_steps=steps, warmup_steps=min(cfg.warmup_steps, steps - 1))
    eval_ids = corpus.val[:EVAL_TOKENS].astype(np.int64)
    if side == "cptlab":

        def train_job():
            train(copy.deepcopy(model), corpus.train, tcfg, CPU, amp, progress=False)
            return {}

        def eval_job():
            res = perplexity(model, eval_ids, cfg.block_size, batch_size=cfg.eval_batch_size, amp_dtype=amp)
            return {"ppl": res.ppl, "tokens": res.tokens}

        return {"train": train_job, "eval": eval_job}

    from datasets import Dataset
    from transformers import Trainer, TrainingArguments

    blocks = to_blocks(corpus.train, cfg.block_size)[: steps * cfg.batch_size].astype(np.int64)
    ds = Dataset.from_dict({"input_ids": blocks.tolist(), "labels": blocks.tolist()})
    tmp = tempfile.mkdtemp()

    def trainer_job():  # run_clm style: same model, blocks, optimizer and schedule, logging off
        args = TrainingArguments(
            output_dir=tmp,
            per_device_train_batch_size=cfg.batch_size,
            max_steps=steps,
            learning_rate=cfg.cpt_lr,
            warmup_steps=tcfg.warmup_steps,
            lr_scheduler_type="cosine",
            max_grad_norm=cfg.grad_clip,
            adam_beta1=cfg.betas[0],
            adam_beta2=cfg.betas[1],
            weight_decay=cfg.weight_decay,
            logging_strategy="no",
            save_strategy="no",
            report_to=[],
            dataloader_num_workers=0,
            use_cpu=True,
            disable_tqdm=True,
            seed=cfg.seed,
            bf16=amp is torch.bfloat16,
        )
        Trainer(model=copy.deepcopy(model), args=args, train_dataset=ds).train()
        return {}

    def reference_job():
        nll, count = reference_ppl(model, eval_ids, cfg.block_size, amp)
        return {"ppl": math.exp(nll / count), "tokens": count}

    return {"train": trainer_job, "eval": reference_job}


def serve(side: str, precision: str, steps: int) -> None:
    """A worker: set up as ``side`` does, warm each job up once, then run the jobs named on stdin."""
    (setup_cpu if side == "cptlab" else setup_threads)()
    cfg, amp, _, _, model, corpus = load_lab(precision)
    todo = jobs(side, cfg, amp, model, corpus, steps)
    for job in todo.values():
        job()
    print(MARK + json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        t0 = time.perf_counter()
        out = todo[line.strip()]()
        print(MARK + json.dumps({**out, "seconds": time.perf_counter() - t0}), flush=True)


class Worker:
    def __init__(self, side: str, precision: str, steps: int):
        self.proc = subprocess.Popen(
            [sys.executable, __file__, "--serve", side, "--precision", precision, "--steps", str(steps)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        self.side = side

    def answer(self) -> dict:
        for line in self.proc.stdout:
            if line.startswith(MARK):
                return json.loads(line[len(MARK) :])
        raise RuntimeError(
            f"the {self.side} benchmark worker stopped (exit code {self.proc.wait()}); its error is above"
        )

    def run(self, job: str) -> dict:
        self.proc.stdin.write(job + "\n")
        self.proc.stdin.flush()
        return self.answer()

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait()


def bench_train(ours: Worker, theirs: Worker, cfg, steps: int, repeats: int) -> dict:
    tokens = steps * cfg.batch_size * (cfg.block_size - 1)
    a, b = paired(lambda: ours.run("train"), lambda: theirs.run("train"), repeats)
    a, b = stats(tokens, a), stats(tokens, b)
    return {
        "cptlab_tokens_per_s": a,
        "hf_trainer_tokens_per_s": b,
        "train_speedup_vs_hf_trainer": a["median"] / b["median"],
        "steps": steps,
        "batch": cfg.batch_size,
        "block": cfg.block_size,
    }


def bench_eval(ours: Worker, theirs: Worker, repeats: int, amp: torch.dtype | None) -> dict:
    a, b = paired(lambda: ours.run("eval"), lambda: theirs.run("eval"), repeats)
    ours_ppl, ref_ppl, tokens, ref_tokens = a[0]["ppl"], b[0]["ppl"], a[0]["tokens"], b[0]["tokens"]
    # fp32: only summation order differs. bf16: matrix products of another shape round differently.
    tol = 1e-5 if amp is None else 1e-3
    a, b = stats(tokens, a), stats(ref_tokens, b)
    return {
        "cptlab_tokens_per_s": a,
        "reference_tokens_per_s": b,
        "eval_speedup_vs_reference": a["median"] / b["median"],
        "cptlab_ppl": ours_ppl,
        "reference_ppl": ref_ppl,
        "tokens": tokens,
        "same_ppl": abs(ours_ppl / ref_ppl - 1) < tol,
        "same_ppl_tolerance": tol,
    }


# ----------------------------------------------------------------------------- data preparation
def bench_prep(tok, docs: list[str], block: int, repeats: int) -> dict:
    def ours():
        to_blocks(pack(encode_documents(tok, docs), tok.eos_token_id, stream_dtype(len(tok))), block)

    def run_clm():
        from datasets import Dataset

        ds = Dataset.from_dict({"text": docs})
        tokenized = ds.map(lambda b: tok(b["text"]), batched=True, remove_columns=["text"], load_from_cache_file=False)

        def group_texts(examples):
            concat = {k: sum(examples[k], []) for k in examples}
            total = (len(concat["input_ids"]) // block) * block
            return {k: [t[i : i + block] for i in range(0, total, block)] for k, t in concat.items()}

        tokenized.map(group_texts, batched=True, load_from_cache_file=False)

    n_bytes = sum(len(d.encode()) for d in docs)
    ours_t, theirs_t = paired(lambda: timed(ours), lambda: timed(run_clm), repeats)
    a, b = stats(n_bytes, ours_t), stats(n_bytes, theirs_t)
    return {
        "cptlab_bytes_per_s": a,
        "datasets_map_bytes_per_s": b,
        "prep_speedup_vs_datasets_map": a["median"] / b["median"],
        "docs": len(docs),
        "bytes": n_bytes,
    }


# ----------------------------------------------------------------------------- memory (one process each)
def peak_mem(which: str, model_dir: str, ids_file: str, block: int, batch: int) -> None:
    (setup_cpu if which == "cptlab" else setup_threads)()
    model = load_model(model_dir).eval()
    ids = np.load(ids_file)
    Path("/proc/self/clear_refs").write_text("5")  # reset the peak-RSS mark (VmHWM) to the current RSS
    before = _rss_kb("VmRSS")
    if which == "cptlab":
        perplexity(model, ids, block, batch_size=batch)
    else:
        x = torch.as_tensor(ids[: (len(ids) // block) * block], dtype=torch.long).view(-1, block)
        with torch.no_grad():  # a batched reference: full float32 logits for the whole batch
            for i in range(0, len(x), batch):
                model(x[i : i + batch], labels=x[i : i + batch])
    after = _rss_kb("VmHWM")
    print(json.dumps({"peak_mb": (after - before) / 1024}))


def _rss_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def bench_mem(model_dir: str, ids: np.ndarray, block: int, batch: int) -> dict:
    f = Path(tempfile.mkdtemp()) / "ids.npy"
    np.save(f, ids)
    out = {}
    for which in ("cptlab", "reference"):
        r = subprocess.run(
            [sys.executable, __file__, "--mem", which, model_dir, str(f), str(block), str(batch)],
            capture_output=True,
            text=True,
            check=True,
        )
        out[which] = json.loads(r.stdout.strip().splitlines()[-1])["peak_mb"]
    return {"eval_peak_mem_mb": out, "batch": batch, "block": block}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--out", default=None)
    p.add_argument("--repeats", type=int, default=6)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--mem", nargs=5)
    p.add_argument("--serve", choices=["cptlab", "baseline"], help=argparse.SUPPRESS)
    p.add_argument(
        "--precision",
        default="auto",
        choices=["auto", "fp32", "bf16"],
        help="both sides at this precision; auto is what the lab picks on this machine",
    )
    args = p.parse_args()
    if args.mem:
        which, model_dir, ids_file, block, batch = args.mem
        return peak_mem(which, model_dir, ids_file, int(block), int(batch))
    if args.serve:
        return serve(args.serve, args.precision, args.steps)

    threads = setup_threads()  # data preparation runs here, both sides with the allocator as shipped
    cfg, amp, base, tok, model, corpus = load_lab(args.precision)
    precision = "bf16" if amp is torch.bfloat16 else "fp32"
    eval_ids = corpus.val[:EVAL_TOKENS].astype(np.int64)
    result = {
        "precision": precision,
        "machine": {
            "torch_threads": threads,
            "device": "cpu",
            "torch": torch.__version__,
            "native_bf16": cpu_has_native_bf16(),
        },
        "model": {"base": base, "params": sum(p.numel() for p in model.parameters()), "vocab": len(tok)},
    }
    print("starting the two worker processes ...", flush=True)
    ours, theirs = (Worker(side, args.precision, args.steps) for side in ("cptlab", "baseline"))
    try:
        for w in (ours, theirs):
            w.answer()  # ready: set up, loaded and warmed up
        print("benchmarking training ...", flush=True)
        result["train"] = bench_train(ours, theirs, cfg, args.steps, args.repeats)
        print("benchmarking evaluation ...", flush=True)
        result["eval"] = bench_eval(ours, theirs, args.repeats, amp)
    finally:
        for w in (ours, theirs):
            w.close()
    print("benchmarking data preparation ...", flush=True)
    docs, _ = load_documents(cfg.code_source)
    result["prep"] = bench_prep(tok, docs[:300], cfg.block_size, args.repeats)
    print("measuring evaluation memory ...", flush=True)
    result["memory"] = bench_mem(base, eval_ids, cfg.block_size, 32)
    result["memory"].update(vocab=len(tok), tokens=int(len(eval_ids)))
    summary = {
        "train_speedup_vs_hf_trainer": result["train"]["train_speedup_vs_hf_trainer"],
        "eval_speedup_vs_reference": result["eval"]["eval_speedup_vs_reference"],
        "prep_speedup_vs_datasets_map": result["prep"]["prep_speedup_vs_datasets_map"],
        "eval_peak_mem_mb": result["memory"]["eval_peak_mem_mb"],
        "eval_same_ppl": result["eval"]["same_ppl"],
        "precision": precision,
        "targets": TARGETS,
        "targets_met": {
            "train_speedup_vs_hf_trainer": result["train"]["train_speedup_vs_hf_trainer"]
            >= TARGETS["train_speedup_vs_hf_trainer"],
            "eval_speedup_vs_reference": result["eval"]["eval_speedup_vs_reference"]
            >= TARGETS["eval_speedup_vs_reference"],
        },
    }
    result = {**summary, **result}
    out = Path(args.out or f"runs/bench-{time.strftime('%Y%m%d-%H%M%S')}")
    out.mkdir(parents=True, exist_ok=True)
    from cptlab.core.results import write_json_atomic

    write_json_atomic(out / "bench.json", result)
    t, e, pr = result["train"], result["eval"], result["prep"]
    rows = [
        (
            "training tokens/s",
            t["cptlab_tokens_per_s"],
            t["hf_trainer_tokens_per_s"],
            "HF Trainer",
            t["train_speedup_vs_hf_trainer"],
            TARGETS["train_speedup_vs_hf_trainer"],
        ),
        (
            "evaluation tokens/s",
            e["cptlab_tokens_per_s"],
            e["reference_tokens_per_s"],
            "HF guide loop",
            e["eval_speedup_vs_reference"],
            TARGETS["eval_speedup_vs_reference"],
        ),
        (
            "corpus prep bytes/s",
            pr["cptlab_bytes_per_s"],
            pr["datasets_map_bytes_per_s"],
            "datasets.map",
            pr["prep_speedup_vs_datasets_map"],
            None,
        ),
    ]
    print(f"\nprecision: {precision} (both sides)")
    print(
        f"\n{'what':<22}  {'cptlab (median [min-max])':<32}  {'baseline (median [min-max])':<46}  {'ratio':>6}  target"
    )
    for name, a, b, label, ratio, target in rows:
        fa = f"{a['median']:,.0f} [{a['min']:,.0f}-{a['max']:,.0f}]"
        fb = f"{label} {b['median']:,.0f} [{b['min']:,.0f}-{b['max']:,.0f}]"
        goal = "" if target is None else f"{target:.1f}x {'met' if ratio >= target else 'not met'}"
        print(f"{name:<22}  {fa:<32}  {fb:<46}  {ratio:>5.2f}x  {goal}")
    m = result["memory"]
    print(
        f"eval peak memory (MB, vocab {m['vocab']}, {m['tokens']} tokens, batch {m['batch']}): "
        f"cptlab {m['eval_peak_mem_mb']['cptlab']:.0f}, reference {m['eval_peak_mem_mb']['reference']:.0f}"
    )
    print(f"same perplexity: {e['same_ppl']} ({e['cptlab_ppl']:.4f} vs {e['reference_ppl']:.4f})")
    print(f"wrote {out / 'bench.json'}")


if __name__ == "__main__":
    main()
