"""What every measurement of the lab shares: the per-step set-up (threads, seed, device, base
model, tokenizer), the code corpus and the English stream, the evaluation under the lab's protocol
and its record, and the forgetting curve's points. Steps 1-4, the study, ``grade --verify`` and the
benchmark all measure through here."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .cache import fingerprint
from .config import LabConfig
from .corpus import Corpus, cached_corpus, eos_join_stream
from .device import autocast_dtype, pick_device, seed_everything, setup_cpu
from .distributed import device_for_rank
from .perplexity import PerplexityResult, learner_perplexity, perplexity
from .results import STEP_NOTEBOOKS, MissingStepError, read_step
from .sources import load_documents, load_model, load_tokenizer
from .tiny import ensure_base_model


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
    return LabConfig.from_dict(read_step(run_dir, 1)["config"])


def code_documents(cfg: LabConfig, tokenizer) -> tuple[list[str], dict]:
    def count(text: str) -> int:
        return len(tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"])

    return load_documents(cfg.code_source, cfg.code_token_budget, count)


def code_corpus(cfg: LabConfig, tokenizer) -> tuple[Corpus, dict]:
    """The reference CPT corpus (cached): what step 1 scores before the learner builds step 2's."""
    docs, info = code_documents(cfg, tokenizer)
    return cached_corpus(docs, tokenizer, cfg.val_fraction, cfg.seed, cfg.block_size), info


CORPUS_FILES = {"train_blocks": "corpus/train_blocks.npy", "val": "corpus/val.npy"}


def run_corpus(run_dir: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Step 2's corpus as the run folder holds it: the training blocks and the validation stream."""
    out = []
    for name, rel in CORPUS_FILES.items():
        path = Path(run_dir) / rel
        if not path.is_file():
            raise MissingStepError(f"{path} does not exist: run step 2 first (notebooks/{STEP_NOTEBOOKS[2]} or `cptlab run --out {run_dir}`)")
        out.append(np.load(path, allow_pickle=False))
    return out[0], out[1]


def general_stream(cfg: LabConfig, tokenizer) -> tuple[np.ndarray, dict]:
    docs, info = load_documents(cfg.general_source)
    return eos_join_stream(docs, tokenizer), info


def evaluate(model, stream: np.ndarray, cfg: LabConfig, device, desc: str, progress: bool = True, fn=None) -> PerplexityResult:
    """Corpus perplexity under the lab's protocol; ``fn`` is a learner's ``corpus_perplexity``."""
    if fn is not None:
        return learner_perplexity(fn, model, stream, cfg.block_size, cfg.eval_max_tokens, device, autocast_dtype(device, cfg.precision))
    return perplexity(
        model, stream, cfg.block_size, stride=cfg.eval_stride, batch_size=cfg.eval_batch_size,
        max_tokens=cfg.eval_max_tokens, device=device, amp_dtype=autocast_dtype(device, cfg.precision),
        progress=progress, desc=desc,
    )


def eval_tokens_sha(stream: np.ndarray, cfg: LabConfig) -> str:
    """Fingerprint of the tokens an evaluation really scored (after the max-tokens cap)."""
    used = np.asarray(stream[: cfg.eval_max_tokens] if cfg.eval_max_tokens else stream)
    return fingerprint(used.astype(np.int64).tobytes())


def eval_record(res: PerplexityResult, stream: np.ndarray, cfg: LabConfig, source: dict) -> dict:
    return {**res.to_dict(), "tokens_sha": eval_tokens_sha(stream, cfg), "source": source}


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
        if getattr(m.config, "loss_type", None) is None:
            m.config.loss_type = "ForCausalLM"  # what transformers picks anyway, without a warning in every notebook
        ctx = getattr(m.config, "n_positions", None)
        if ctx is not None and self.cfg.block_size > ctx:
            raise ValueError(f"block_size={self.cfg.block_size} is above the model's context of {ctx} tokens: set block_size <= {ctx}")
        return m.to(self.device).eval()


def curve_point(model, step: int, code: np.ndarray, general: np.ndarray, cfg: LabConfig, device, amp, base: dict | None) -> dict:
    c = perplexity(model, code, cfg.block_size, cfg.eval_stride, cfg.eval_batch_size, cfg.curve_max_tokens, device, amp)
    g = perplexity(model, general, cfg.block_size, cfg.eval_stride, cfg.eval_batch_size, cfg.curve_max_tokens, device, amp)
    point = {"step": step, "code_ppl": c.ppl, "general_ppl": g.ppl, "code_nll_sum": c.nll_sum, "code_tokens": c.tokens,
             "general_nll_sum": g.nll_sum, "general_tokens": g.tokens}
    ref = base or point
    point["forgetting_ratio"] = g.ppl / ref["general_ppl"]
    point["code_ppl_drop"] = 1.0 - c.ppl / ref["code_ppl"]
    return point


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
