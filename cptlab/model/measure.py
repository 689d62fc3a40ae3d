"""What every measurement of the lab shares: the per-step set-up (threads, seed, device, base
model, tokenizer), the code corpus and the English stream, the evaluation under the lab's protocol
and its record, and the forgetting curve's points. Steps 1-4, the study, ``grade --verify`` and the
benchmark all measure through here."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from cptlab.core.cache import fingerprint
from cptlab.core.config import LabConfig
from cptlab.core.distributed import device_for_rank
from cptlab.core.results import STEP_NOTEBOOKS, MissingStepError, read_step
from cptlab.core.uncertainty import drop_interval, ppl_interval, ratio_interval
from cptlab.data.corpus import Corpus, cached_corpus, eos_join_stream
from cptlab.data.sources import load_documents, load_model, load_tokenizer
from cptlab.model.base_model import ensure_base_model
from cptlab.model.perplexity import PerplexityResult, learner_perplexity, perplexity
from cptlab.speed.device import autocast_dtype, pick_device, seed_everything, setup_cpu


def resolve_base_model(cfg: LabConfig, progress: bool = True) -> str:
    """A hub id or folder for ``from_pretrained``; the tiny presets build (once) their own."""
    if cfg.base_model is not None:
        return cfg.base_model
    return str(ensure_base_model(cfg, progress=progress))


def model_path(run_dir: str | Path, p: str) -> Path:
    """A model path from a results file: relative ones are inside the run folder."""
    q = Path(p)
    return q if q.is_absolute() else Path(run_dir) / q


def config_of(run_dir: str | Path) -> LabConfig:
    stored = dict(read_step(run_dir, 1)["config"])
    if isinstance(stored, dict) and "split_seed" not in stored and "seed" in stored:
        stored["split_seed"] = stored["seed"]  # folders from before the preset's own split seed drew it with the run's
    return LabConfig.from_dict(stored)


def code_documents(cfg: LabConfig, tokenizer) -> tuple[list[str], dict]:
    def count(text: str) -> int:
        return len(tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"])

    return load_documents(cfg.code_source, cfg.code_token_budget, count)


def code_corpus(cfg: LabConfig, tokenizer) -> tuple[Corpus, dict]:
    """The reference CPT corpus (cached): what step 1 scores before the learner builds step 2's."""
    docs, info = code_documents(cfg, tokenizer)
    return cached_corpus(docs, tokenizer, cfg.val_fraction, cfg.split_seed, cfg.block_size), info


CORPUS_FILES = {"train_blocks": "corpus/train_blocks.npy", "val": "corpus/val.npy"}


def run_corpus(run_dir: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Step 2's corpus as the run folder holds it: the training blocks and the validation stream."""
    out = []
    for name, rel in CORPUS_FILES.items():
        path = Path(run_dir) / rel
        if not path.is_file():
            raise MissingStepError(
                f"{path} does not exist: run step 2 first (notebooks/{STEP_NOTEBOOKS[2]} or `cptlab run --out "
                f"{run_dir}`)"
            )
        out.append(np.load(path, allow_pickle=False))
    return out[0], out[1]


def general_stream(cfg: LabConfig, tokenizer) -> tuple[np.ndarray, dict]:
    docs, info = load_documents(cfg.general_source)
    return eos_join_stream(docs, tokenizer), info


def evaluate(
    model,
    stream: np.ndarray,
    cfg: LabConfig,
    device,
    desc: str,
    progress: bool = True,
    fn=None,
    eos_id: int | None = None,
) -> PerplexityResult:
    """Corpus perplexity under the lab's protocol; ``fn`` is a learner's ``corpus_perplexity``.
    With ``eos_id`` the result holds per-document sums for its confidence interval (for a learner's
    function, from the reference run on the same tokens: the learner's returns totals only)."""
    amp = autocast_dtype(device, cfg.precision)
    if fn is not None:
        res = learner_perplexity(fn, model, stream, cfg.block_size, cfg.eval_max_tokens, device, amp)
        if eos_id is not None:
            ref = evaluate(model, stream, cfg, device, desc, progress, eos_id=eos_id)
            res.units = {**ref.units, "from": "the reference implementation on the same tokens", "nll_sum": ref.nll_sum}
        return res
    return perplexity(
        model,
        stream,
        cfg.block_size,
        stride=cfg.eval_stride,
        batch_size=cfg.eval_batch_size,
        max_tokens=cfg.eval_max_tokens,
        device=device,
        amp_dtype=amp,
        progress=progress,
        desc=desc,
        eos_id=eos_id,
    )


def eval_tokens_sha(stream: np.ndarray, cfg: LabConfig) -> str:
    """Fingerprint of the tokens an evaluation really scored (after the max-tokens cap)."""
    used = np.asarray(stream[: cfg.eval_max_tokens] if cfg.eval_max_tokens else stream)
    return fingerprint(used.astype(np.int64).tobytes())


def eval_record(res: PerplexityResult, stream: np.ndarray, cfg: LabConfig, source: dict) -> dict:
    """A perplexity as a results file stores it: raw sums, protocol, the tokens' fingerprint, and
    (with per-document sums) its confidence interval."""
    rec = {**res.to_dict(), "tokens_sha": eval_tokens_sha(stream, cfg), "source": source}
    if res.units:
        rec["interval"] = ppl_interval(res.units)
    return rec


class StepSetup:
    """What every step sets up first: threads, seed, device, the base model and its tokenizer."""

    def __init__(self, cfg: LabConfig, base_model: str):
        setup_cpu()
        seed_everything(cfg.seed)
        self.cfg = cfg
        self.device = device_for_rank(pick_device(cfg.device))
        self.amp = autocast_dtype(self.device, cfg.precision)
        self.base_model = base_model
        self.tokenizer = load_tokenizer(base_model)

    def model(self, path: str | None = None):
        m = load_model(path or self.base_model)
        if getattr(m, "loss_type", None) is None:
            m.loss_type = "ForCausalLM"  # what transformers picks anyway for GPT2LMHeadModel, without its warning
        ctx = getattr(m.config, "n_positions", None)
        if ctx is not None and self.cfg.block_size > ctx:
            raise ValueError(
                f"block_size={self.cfg.block_size} is above the model's context of {ctx} tokens: set block_size <= "
                f"{ctx}"
            )
        return m.to(self.device).eval()


def scored(
    model,
    name: str,
    code: np.ndarray,
    general: np.ndarray,
    cfg: LabConfig,
    device,
    eos_id: int,
    baseline: dict,
    progress: bool = False,
    **extra,
) -> dict:
    """A model on both evaluation sets (the headline's tokens and protocol), with its gain and
    forgetting against ``baseline`` (step 1's perplexities and per-document sums) and their
    paired intervals. The curve's points and the study's variants are all such records."""
    c = evaluate(model, code, cfg, device, f"{name}: code", progress, eos_id=eos_id)
    g = evaluate(model, general, cfg, device, f"{name}: English", progress, eos_id=eos_id)
    return record_of(name, c, g, baseline, **extra)


def rescored(code: dict, general: dict, name: str, baseline: dict, **extra) -> dict | None:
    """``scored`` without scoring again, from the evaluation records a results file holds for the
    same weights (step 1's for the base, step 4's for the CPT run): the same tokens and protocol,
    per-document sums from the reference, so the numbers a new measurement would give. ``None``
    for records without per-document sums."""
    results = []
    for rec in (code, general):
        units = (rec or {}).get("units")
        if not units:
            return None
        nll_sum = float(units.get("nll_sum", rec["nll_sum"]))  # the reference's, where a learner's made the total
        ppl = math.exp(nll_sum / rec["tokens"])  # as perplexity() computes it
        plain = {k: units[k] for k in ("unit", "nll", "tokens")}
        results.append(PerplexityResult(ppl=ppl, nll_sum=nll_sum, tokens=rec["tokens"], units=plain))
    return record_of(name, *results, baseline, **extra)


def record_of(name: str, c: PerplexityResult, g: PerplexityResult, baseline: dict, **extra) -> dict:
    """The record ``scored`` writes, from the two perplexities."""
    rec = {
        "name": name,
        "code_ppl": c.ppl,
        "general_ppl": g.ppl,
        "code_nll_sum": c.nll_sum,
        "code_tokens": c.tokens,
        "general_nll_sum": g.nll_sum,
        "general_tokens": g.tokens,
        "code_ppl_drop": 1.0 - c.ppl / baseline["code_ppl"],
        "forgetting_ratio": g.ppl / baseline["general_ppl"],
        "code_units": c.units,
        "general_units": g.units,
        **extra,
    }
    if baseline.get("code_units") and baseline.get("general_units"):
        rec["code_ppl_drop_ci"] = drop_interval(baseline["code_units"], c.units)
        rec["forgetting_ratio_ci"] = ratio_interval(baseline["general_units"], g.units)
    return rec


def baseline_of(s1: dict, curve: list[dict] | None = None) -> dict:
    """Step 1's perplexities and per-document sums: what every later number is compared with.
    A run folder from before per-document sums takes them from the CPT run's step-0 point (the
    same base model on the same tokens)."""
    base = {
        "code_ppl": s1["baseline_code_ppl"],
        "general_ppl": s1["baseline_general_ppl"],
        "code_units": (s1.get("code") or {}).get("units"),
        "general_units": (s1.get("general") or {}).get("units"),
    }
    if not base["code_units"] and curve and curve[0].get("code_units"):
        base.update(code_units=curve[0]["code_units"], general_units=curve[0]["general_units"])
    return base


def floor_crossing(curve: list[dict], floor: float) -> dict:
    """The first curve point whose forgetting ratio is above the floor, and the best point under it."""
    above = next((p for p in curve if p["forgetting_ratio"] > floor), None)
    under = [p for p in curve if p["forgetting_ratio"] <= floor]
    best = max(under, key=lambda p: p["code_ppl_drop"]) if under else None
    return {
        "retention_floor": floor,
        "first_step_above": above["step"] if above else None,
        "code_ppl_drop_at_crossing": above["code_ppl_drop"] if above else None,
        "best_step_under_floor": best["step"] if best else None,
        "best_code_ppl_drop_under_floor": best["code_ppl_drop"] if best else None,
    }
