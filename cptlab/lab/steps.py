"""The four steps of the lab as functions of a run folder: what the notebooks and ``cptlab run``
call. Each step reads the earlier steps' results files, never hidden state."""

from __future__ import annotations

import shutil
import time
import uuid
from pathlib import Path
from typing import Callable

import numpy as np

from cptlab.core.cache import fingerprint
from cptlab.core.config import LabConfig
from cptlab.core.files import atomic_dir, atomic_path, sha256_file
from cptlab.core.results import read_step, versions, write_step
from cptlab.core.uncertainty import MIN_EVAL_DOCUMENTS, MIN_EVAL_TOKENS, drop_interval, ratio_interval
from cptlab.data.corpus import build_corpus, split_streams, to_blocks, window_crossing_eos
from cptlab.model.measure import (
    CORPUS_FILES,
    StepSetup,
    baseline_of,
    code_corpus,
    code_documents,
    config_of,
    eval_record,
    eval_tokens_sha,
    evaluate,
    floor_crossing,
    general_stream,
    model_path,
    rescored,
    resolve_base_model,
    run_corpus,
    scored,
)
from cptlab.model.train import Checkpointing, Hooks, train
from cptlab.speed.device import describe, seed_everything


def run_step1(cfg: LabConfig, run_dir: str | Path, progress: bool = True, perplexity_fn=None) -> dict:
    """Baseline perplexity of the base model on code (the CPT corpus's validation split) and English,
    computed with ``perplexity_fn`` (the learner's, in notebook 1) or the library's reference."""
    cfg.validate()
    t0 = time.perf_counter()
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    s = StepSetup(cfg, resolve_base_model(cfg, progress))
    model = s.model()
    corpus, code_info = code_corpus(cfg, s.tokenizer)
    english, english_info = general_stream(cfg, s.tokenizer)
    eos = s.tokenizer.eos_token_id
    code = evaluate(model, corpus.val, cfg, s.device, "baseline code ppl", progress, perplexity_fn, eos_id=eos)
    general = evaluate(model, english, cfg, s.device, "baseline English ppl", progress, perplexity_fn, eos_id=eos)

    out = {
        "step": 1,
        "run_id": uuid.uuid4().hex,
        "preset": cfg.preset,
        "seed": cfg.seed,
        "config": cfg.to_dict(),
        "versions": versions(),
        "device": describe(s.device),
        "base_model": s.base_model,
        "model_params": sum(p.numel() for p in model.parameters()),
        "vocab_size": len(s.tokenizer),
        "baseline_code_ppl": code.ppl,
        "baseline_general_ppl": general.ppl,
        "code": eval_record(code, corpus.val, cfg, {**code_info, "split": "val"}),
        "general": eval_record(general, english, cfg, english_info),
        "seconds": time.perf_counter() - t0,
    }
    write_step(run_dir, 1, out)
    return out


def run_step2(run_dir: str | Path, split_fn=None, blocks_fn=None) -> dict:
    """The CPT corpus: EOS-joined streams split on whole documents, the training stream cut into
    blocks, with ``split_fn`` / ``blocks_fn`` (the learner's, in notebook 2) or the references.
    The blocks and the validation stream are saved in the run folder: steps 3 and 4 use them."""
    cfg = config_of(run_dir)
    s1 = read_step(run_dir, 1)
    s = StepSetup(cfg, s1["base_model"])
    docs, info = code_documents(cfg, s.tokenizer)
    corpus = build_corpus(
        docs,
        s.tokenizer,
        cfg.val_fraction,
        cfg.split_seed,
        cfg.block_size,
        split_fn=split_fn or split_streams,
        blocks_fn=blocks_fn or to_blocks,
    )
    if eval_tokens_sha(corpus.val, cfg) != s1["code"]["tokens_sha"]:
        raise ValueError(
            "the validation split differs from the one step 1 scored (the lab's rule with this seed): "
            "check split_documents against its check cell, then run this cell again"
        )
    files = {}
    for name, array in (("train_blocks", corpus.blocks), ("val", corpus.val)):
        path = Path(run_dir) / CORPUS_FILES[name]
        with atomic_path(path) as tmp:
            np.save(tmp, np.ascontiguousarray(array), allow_pickle=False)
        files[name] = {"path": CORPUS_FILES[name], "sha256": sha256_file(path), "shape": list(array.shape)}
    stats = {k: v for k, v in corpus.stats.items()}
    out = {
        "step": 2,
        "run_id": s1["run_id"],
        "preset": cfg.preset,
        "seed": cfg.seed,
        "source": info,
        **stats,
        "files": files,
        "implementation": {
            "split": getattr(split_fn, "__name__", "cptlab.data.corpus.split_streams")
            if split_fn
            else "cptlab.data.corpus.split_streams",
            "blocks": getattr(blocks_fn, "__name__", "") if blocks_fn else "cptlab.data.corpus.to_blocks",
        },
    }
    write_step(run_dir, 2, out)
    return out


class ForgettingCurve:
    """Both perplexities at the points the loop asks for (``run.evaluate``), on the headline's tokens
    and protocol (its last point is step 4's number), and where the run stopped. ``state`` is plain
    JSON, saved and restored with each checkpoint."""

    def __init__(self, cfg: LabConfig, score: Callable[[object, int, list[dict]], dict]):
        self.cfg, self.score = cfg, score
        self.state: dict = {"curve": [], "stopped": {"at": None, "eval_seconds": 0.0}}

    @property
    def points(self) -> list[dict]:
        return self.state["curve"]

    @property
    def stopped_at(self) -> int | None:
        return self.state["stopped"]["at"]

    @property
    def eval_seconds(self) -> float:
        return self.state["stopped"]["eval_seconds"]

    def measure(self, model, step: int) -> dict:
        point = self.score(model, step, self.points)
        self.points.append(point)
        return point

    def evaluate(self, model, step: int) -> dict:
        """The loop's ``run.evaluate``: the point at ``step``, which the loop appends to the curve. Its
        time is counted apart, so the training speed leaves it out."""
        t = time.perf_counter()
        point = self.score(model, step, self.points)
        self.state["stopped"]["eval_seconds"] += time.perf_counter() - t
        return point

    def ended(self, log: list[dict]) -> None:
        """A run that ended before ``max_steps`` stopped at its last step (the loop's floor test)."""
        last = log[-1]["step"] if log else 0
        self.state["stopped"]["at"] = last if last < self.cfg.max_steps else None


def run_step3(
    run_dir: str | Path, progress: bool = True, resume: bool = True, lr_fn=None, step_fn=None, loop_fn=None
) -> dict:
    """The CPT run; saves a self-contained adapted model folder (safetensors + tokenizer).

    It checkpoints every ``checkpoint_every`` steps; with ``resume`` (the default) a run that was
    interrupted continues from its last checkpoint and ends exactly where an uninterrupted run would.
    ``loop_fn``, ``lr_fn`` and ``step_fn`` are the learner's loop, schedule and optimizer step (notebook 3)."""
    cfg = config_of(run_dir)
    s1 = read_step(run_dir, 1)
    read_step(run_dir, 2)
    s = StepSetup(cfg, s1["base_model"])
    blocks, val = run_corpus(run_dir)
    english, _ = general_stream(cfg, s.tokenizer)
    model = s.model()
    eos = s.tokenizer.eos_token_id

    def point(step: int, rec: dict) -> dict:
        return {"step": step, **{k: v for k, v in rec.items() if k != "name"}}

    def score(m, step: int, curve: list[dict]) -> dict:
        base = baseline_of(s1, curve) if step else baseline_of(s1)
        return point(step, scored(m, f"step {step}", val, english, cfg, s.device, eos, base))

    curve = ForgettingCurve(cfg, score)
    # the curve's state rides in every checkpoint: a resumed run keeps the points it had
    ckpt = Checkpointing(
        Path(run_dir) / "checkpoints" / "cpt",
        cfg.checkpoint_every,
        key=fingerprint(cfg.to_dict(), s1["base_model"]),
        extra=curve.state,
    )
    if not resume and ckpt.folder.exists():
        shutil.rmtree(ckpt.folder)
    if not ckpt.exists():
        start = rescored(s1["code"], s1["general"], "step 0", baseline_of(s1))  # the base, as step 1 scored it
        if start is None:
            curve.measure(model, 0)
        else:
            curve.points.append(point(0, start))
    seed_everything(cfg.seed)
    result = train(
        model,
        blocks,
        cfg,
        s.device,
        s.amp,
        progress=progress,
        hooks=Hooks(
            loop_fn=loop_fn,
            lr_fn=lr_fn,
            step_fn=step_fn,
            evaluate=curve.evaluate,
            curve=curve.points,
            checkpointing=ckpt,
        ),
    )
    curve.ended(result.log)
    folder = Path(run_dir) / "models" / "adapted"
    with atomic_dir(folder) as tmp:
        model.to("cpu").save_pretrained(tmp, safe_serialization=True)
        s.tokenizer.save_pretrained(tmp)
    out = {
        "step": 3,
        "run_id": s1["run_id"],
        "preset": cfg.preset,
        "seed": cfg.seed,
        "hparams": {
            "cpt_lr": cfg.cpt_lr,
            "warmup_steps": cfg.warmup_steps,
            "max_steps": cfg.max_steps,
            "schedule": "linear warm-up then cosine (transformers get_cosine_schedule_with_warmup)",
            "implementation": {
                "lr": getattr(lr_fn, "__name__", "lr_fn") if lr_fn else "cptlab.model.schedule.lr_multiplier",
                "step": getattr(step_fn, "__name__", "step_fn") if step_fn else "cptlab.model.train",
                "loop": getattr(loop_fn, "__name__", "loop_fn") if loop_fn else "cptlab.model.loop.cpt_loop",
            },
            "min_lr_ratio": cfg.min_lr_ratio,
            "grad_clip": cfg.grad_clip,
            "block_size": cfg.block_size,
            "batch_size": cfg.batch_size,
            "grad_accum": cfg.grad_accum,
            "tokens_per_step": cfg.tokens_per_step,
            "optimizer": "AdamW",
            "betas": list(cfg.betas),
            "weight_decay": cfg.weight_decay,
            "precision": str(s.amp).replace("torch.", "") if s.amp else "fp32",
        },
        "log": result.log,
        "curve": curve.points,
        "curve_protocol": {
            "every": cfg.curve_every,
            "max_tokens": cfg.eval_max_tokens,
            "block_size": cfg.block_size,
            "tokens": "the headline's: the same evaluation tokens and protocol as steps 1 and 4",
            "code_tokens_sha": eval_tokens_sha(val, cfg),
            "general_tokens_sha": eval_tokens_sha(english, cfg),
        },
        "floor": {**floor_crossing(curve.points, cfg.retention_floor), "stopped_at_step": curve.stopped_at},
        "seconds": result.seconds,
        "curve_eval_seconds": curve.eval_seconds,
        "tokens_seen": result.tokens,
        "tokens_per_second": result.tokens / max(1e-9, result.seconds - curve.eval_seconds),
        "base_model": s1["base_model"],
        "adapted_model": "models/adapted",  # relative to the run folder: a run folder can be moved or handed in
        "device": describe(s.device),
    }
    write_step(run_dir, 3, out)
    shutil.rmtree(ckpt.folder, ignore_errors=True)  # only now: the results that replace it are safely written
    return out


def run_step4(run_dir: str | Path, progress: bool = True, drop_fn=None, ratio_fn=None) -> dict:
    """The adapted model on the same evaluation tokens as the baseline: gain on code, forgetting of
    English, from ``drop_fn`` / ``ratio_fn`` (the learner's, in notebook 4) or the definitions."""
    cfg = config_of(run_dir)
    s1 = read_step(run_dir, 1)
    s3 = read_step(run_dir, 3)
    s = StepSetup(cfg, s1["base_model"])
    _, val = run_corpus(run_dir)
    english, _ = general_stream(cfg, s.tokenizer)
    model = s.model(str(model_path(run_dir, s3["adapted_model"])))
    eos = s.tokenizer.eos_token_id
    code = evaluate(model, val, cfg, s.device, "adapted code ppl", progress, eos_id=eos)
    general = evaluate(model, english, cfg, s.device, "adapted English ppl", progress, eos_id=eos)
    base = baseline_of(s1, s3.get("curve"))
    if not base["code_units"]:
        raise RuntimeError(
            "this run folder's step 3 was made by an older cptlab, without per-document sums for the "
            "confidence intervals: re-run step 3 (notebooks/03_cpt.ipynb), then this step"
        )
    code_rec = eval_record(code, val, cfg, {"split": "val"})
    english_rec = eval_record(general, english, cfg, {})
    for name, rec in (("code", code_rec), ("general", english_rec)):
        if rec["tokens_sha"] != s1[name]["tokens_sha"]:
            raise RuntimeError(
                f"the {name} evaluation tokens differ from step 1's: re-run the lab from step 1 in a new run folder"
            )
    out = {
        "step": 4,
        "run_id": s1["run_id"],
        "preset": cfg.preset,
        "seed": cfg.seed,
        "base_model": s1["base_model"],
        "adapted_model": s3["adapted_model"],
        "baseline_code_ppl": s1["baseline_code_ppl"],
        "baseline_general_ppl": s1["baseline_general_ppl"],
        "adapted_code_ppl": code.ppl,
        "adapted_general_ppl": general.ppl,
        "code_ppl_drop": _number(drop_fn or code_ppl_drop, s1["baseline_code_ppl"], code.ppl),
        "forgetting_ratio": _number(ratio_fn or forgetting_ratio, s1["baseline_general_ppl"], general.ppl),
        "code": code_rec,
        "general": english_rec,
        "baseline": {"code": s1["code"], "general": s1["general"]},
        # paired over the documents of each set: the same resampled documents for the base and the adapted model
        "code_ppl_drop_ci": drop_interval(base["code_units"], code.units),
        "forgetting_ratio_ci": ratio_interval(base["general_units"], general.units),
    }
    write_step(run_dir, 4, out)
    return out


def code_ppl_drop(baseline_code_ppl: float, adapted_code_ppl: float) -> float:
    """The gain: the fraction of the base model's code perplexity that CPT removed."""
    return 1.0 - adapted_code_ppl / baseline_code_ppl


def forgetting_ratio(baseline_general_ppl: float, adapted_general_ppl: float) -> float:
    """The cost: English perplexity after CPT over before (1.0 means nothing forgotten)."""
    return adapted_general_ppl / baseline_general_ppl


def _number(fn, *args) -> float:
    v = fn(*args)
    if isinstance(v, bool) or not isinstance(v, (int, float, np.floating)) or not np.isfinite(v):
        raise ValueError(
            f"{getattr(fn, '__name__', 'the function')}{args} returned {v!r}, not a finite number: run its check cell"
        )
    return float(v)


def summary_rows(run_dir: str | Path) -> list[tuple[str, str]]:
    """The headline numbers, each comparison with its paired 95% interval over documents."""
    s4 = read_step(run_dir, 4)
    s3 = read_step(run_dir, 3)

    def ci(key: str, scale: float, fmt: str, unit: str = "") -> str:
        c = s4.get(f"{key}_ci")
        if not isinstance(c, dict):
            return ""
        return f" (95% CI {scale * c['low']:{fmt}}{unit} to {scale * c['high']:{fmt}}{unit})"

    return [
        ("preset", s4["preset"]),
        ("baseline code ppl", f"{s4['baseline_code_ppl']:.3f}"),
        ("adapted code ppl", f"{s4['adapted_code_ppl']:.3f}"),
        ("code ppl drop", f"{100 * s4['code_ppl_drop']:.1f}%" + ci("code_ppl_drop", 100, ".1f", "%")),
        ("baseline English ppl", f"{s4['baseline_general_ppl']:.3f}"),
        ("adapted English ppl", f"{s4['adapted_general_ppl']:.3f}"),
        ("forgetting ratio", f"{s4['forgetting_ratio']:.3f}" + ci("forgetting_ratio", 1, ".3f")),
        ("CPT steps / tokens", f"{len(s3['log'])} / {s3['tokens_seen']}"),
        ("CPT seconds", f"{s3['seconds']:.1f}"),
        ("adapted model", str(model_path(run_dir, s4["adapted_model"]))),
    ]


def small_split_warnings(run_dir: str | Path) -> list[str]:
    """One line per evaluation set too small for its numbers to mean much, saying what to do."""
    s1, s2 = read_step(run_dir, 1), read_step(run_dir, 2)
    if s1.get("preset") == "smoke":  # seconds, not conclusions
        return []
    out = []
    docs, tokens = int(s2["val_docs"]), int(s2["val_tokens"])
    if tokens < MIN_EVAL_TOKENS or docs < MIN_EVAL_DOCUMENTS:
        out.append(
            f"the code validation split holds {tokens:,} tokens in {docs} document(s), under the lab's "
            f"{MIN_EVAL_TOKENS:,} tokens in {MIN_EVAL_DOCUMENTS} documents: the code numbers and their intervals rest "
            "on little. Add code (a larger --code-dir) or give validation a larger share (--set val_fraction=0.1)"
        )
    general = int(s1["general"]["tokens"])
    if general < MIN_EVAL_TOKENS:
        out.append(
            f"the English evaluation scored {general:,} tokens, under the lab's {MIN_EVAL_TOKENS:,}: the forgetting "
            "ratio rests on little. Pass a longer --general-file (or raise --eval-max-tokens if it was cut)"
        )
    return out


def format_table(rows: list[tuple[str, str]]) -> str:
    w = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{w}}  {v}" for k, v in rows)


def eos_window(run_dir: str | Path) -> dict:
    """A training block that crosses a document seam, decoded, with the EOS shown: what the model
    sees when one file ends and the next begins."""
    cfg = config_of(run_dir)
    s = StepSetup(cfg, read_step(run_dir, 1)["base_model"])
    blocks, _ = run_corpus(run_dir)
    eos = s.tokenizer.eos_token_id
    block = window_crossing_eos(blocks, eos)
    if block is None:
        return {
            "text": "(no window crosses a document boundary: every document is longer than a block)",
            "eos_positions": [],
        }
    pos = [int(i) for i in np.flatnonzero(block == eos)]
    return {
        "text": s.tokenizer.decode(block.tolist()),
        "eos_positions": pos,
        "eos_token": s.tokenizer.eos_token,
        "block_size": cfg.block_size,
    }


def step_table(result: dict, keys: list[str]) -> str:
    rows = []
    for k in keys:
        v = result.get(k)
        rows.append((k, f"{v:,.4f}" if isinstance(v, float) else f"{v:,}" if isinstance(v, int) else str(v)))
    return format_table(rows)
