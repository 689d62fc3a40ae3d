"""Step 4 as a trade-off study: the forgetting curve, a retention floor, and the four production
choices (pure CPT, replay mixing, LoRA on frozen weights, weight interpolation) measured with the
same budget and the same evaluation protocol and tokens as the headline numbers."""
from __future__ import annotations

import hashlib
from pathlib import Path

import torch

from .config import LabConfig
from .corpus import eos_join_stream, replay_batches
from .device import seed_everything
from .measure import StepSetup, config_of, evaluate, floor_crossing, general_stream, model_path, run_corpus
from .results import read_step, write_step
from .sources import load_documents
from .train import train


# ----------------------------------------------------------------------------- LoRA
def base_weights_digest(model: torch.nn.Module) -> str:
    """sha256 of every base (non-LoRA) parameter, named as in the plain model."""
    h = hashlib.sha256()
    items = []
    for name, p in model.named_parameters():
        if "lora_" in name:
            continue
        clean = name.replace("base_model.model.", "").replace(".base_layer", "")
        items.append((clean, p))
    for name, p in sorted(items, key=lambda t: t[0]):
        h.update(name.encode())
        h.update(p.detach().to("cpu").contiguous().numpy().tobytes())
    return h.hexdigest()


def lora_model(model, cfg: LabConfig):
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(
        r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=0.0, bias="none",
        target_modules=["c_attn", "c_proj", "c_fc"], fan_in_fan_out=True,  # GPT-2's Conv1D layers
    )
    return get_peft_model(model, config)


# ----------------------------------------------------------------------------- interpolation
@torch.no_grad()
def interpolate_(model, base: dict[str, torch.Tensor], tuned: dict[str, torch.Tensor], alpha: float) -> None:
    """theta(alpha) = (1 - alpha) theta_base + alpha theta_cpt, in place (WiSE-FT)."""
    for name, p in model.named_parameters():
        p.copy_((1.0 - alpha) * base[name] + alpha * tuned[name])


def params_of(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters()}


# ----------------------------------------------------------------------------- the decision
def recommend(variants: list[dict], floor: float, choose_fn=None) -> dict:
    """The largest code gain whose forgetting ratio stays at or under the floor (or the variant
    ``choose_fn(variants, floor)`` names: the learner's rule in notebook 4)."""
    under = [v for v in variants if v["forgetting_ratio"] <= floor]
    if choose_fn is not None:
        name = choose_fn([dict(v) for v in variants], floor)
        best = next((v for v in variants if v["name"] == name), None)
        if best is None:
            raise ValueError(f"{getattr(choose_fn, '__name__', 'choose_fn')} returned {name!r}, not one of the variants' names "
                             f"{[v['name'] for v in variants]}: run its check cell")
        why = (f"chosen by {getattr(choose_fn, '__name__', 'choose_fn')}: code perplexity drop {100 * best['code_ppl_drop']:.1f}%, "
               f"forgetting_ratio {best['forgetting_ratio']:.3f} (floor {floor})")
    elif under:
        best = max(under, key=lambda v: v["code_ppl_drop"])
        why = (f"largest code perplexity drop ({100 * best['code_ppl_drop']:.1f}%) among the {len(under)} variant(s) "
               f"with forgetting_ratio <= {floor}")
    else:
        best = min(variants, key=lambda v: v["forgetting_ratio"])
        why = f"no variant stays under the floor {floor}; this one forgets least ({best['forgetting_ratio']:.3f})"
    return {"name": best["name"], "choice": best["choice"], "code_ppl_drop": best["code_ppl_drop"],
            "forgetting_ratio": best["forgetting_ratio"], "reason": why}


def pareto_front(variants: list[dict]) -> list[str]:
    """Names of variants no other variant beats on both gain and forgetting."""
    front = []
    for v in variants:
        dominated = any(
            o is not v and o["code_ppl_drop"] >= v["code_ppl_drop"] and o["forgetting_ratio"] <= v["forgetting_ratio"]
            and (o["code_ppl_drop"] > v["code_ppl_drop"] or o["forgetting_ratio"] < v["forgetting_ratio"])
            for o in variants
        )
        if not dominated:
            front.append(v["name"])
    return front


def run_study(run_dir: str | Path, progress: bool = True, choose_fn=None) -> dict:
    """Measure every variant, add the study to ``step4_tradeoff.json``, return it. ``choose_fn(variants,
    floor) -> name`` is the learner's decision rule (notebook 4); ``recommend`` is the reference."""
    cfg = config_of(run_dir)
    s1, s3, s4 = read_step(run_dir, 1), read_step(run_dir, 3), read_step(run_dir, 4)
    s = StepSetup(cfg, s1["base_model"])
    blocks, val = run_corpus(run_dir)
    english_eval, _ = general_stream(cfg, s.tokenizer)
    b_code, b_gen = s1["baseline_code_ppl"], s1["baseline_general_ppl"]

    def measure(model, name: str, choice: str, **extra) -> dict:
        c = evaluate(model, val, cfg, s.device, f"{name}: code", progress)
        g = evaluate(model, english_eval, cfg, s.device, f"{name}: English", progress)
        return {"name": name, "choice": choice, "code_ppl": c.ppl, "general_ppl": g.ppl,
                "code_nll_sum": c.nll_sum, "code_tokens": c.tokens, "general_nll_sum": g.nll_sum, "general_tokens": g.tokens,
                "code_ppl_drop": 1.0 - c.ppl / b_code, "forgetting_ratio": g.ppl / b_gen, **extra}

    variants = [{"name": "pure CPT", "choice": "pure_cpt", "code_ppl": s4["adapted_code_ppl"], "general_ppl": s4["adapted_general_ppl"],
                 "code_nll_sum": s4["code"]["nll_sum"], "code_tokens": s4["code"]["tokens"],
                 "general_nll_sum": s4["general"]["nll_sum"], "general_tokens": s4["general"]["tokens"],
                 "code_ppl_drop": s4["code_ppl_drop"], "forgetting_ratio": s4["forgetting_ratio"], "replay_fraction": 0.0}]

    # replay mixing: English the base model was pre-trained on, never the English evaluation set
    notes = []
    if cfg.replay_source is not None:
        eng_docs, _ = load_documents(cfg.replay_source)
        english = eos_join_stream(eng_docs, s.tokenizer)
        for frac in cfg.replay_fractions:
            seed_everything(cfg.seed)
            record: list[int] = []
            model = s.model()
            res = train(model, blocks, cfg, s.device, s.amp, progress=progress, desc=f"replay {frac:.0%}",
                        batch_fn=replay_batches(blocks, english, cfg, frac, record))
            windows = len(record) * cfg.batch_size * cfg.grad_accum
            variants.append(measure(model, f"replay {frac:.0%}", "replay", replay_fraction=frac,
                                    replay_windows_per_step=record, replay_windows=sum(record), windows=windows,
                                    replay_fraction_realised=sum(record) / windows, final_loss=res.log[-1]["loss"]))
    else:
        notes.append("replay skipped: no replay_source (English disjoint from the evaluation set) is configured")

    # LoRA on frozen weights
    seed_everything(cfg.seed)
    model = s.model()
    before = base_weights_digest(model)
    peft_model = lora_model(model, cfg)
    trainable = sum(p.numel() for p in peft_model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in peft_model.parameters())
    res = train(peft_model, blocks, cfg.replace(cpt_lr=cfg.lora_lr), s.device, s.amp, progress=progress, desc="LoRA")
    after = base_weights_digest(peft_model)
    merged = peft_model.merge_and_unload()
    variants.append(measure(merged, f"LoRA r={cfg.lora_r}", "lora", lora_r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_lr=cfg.lora_lr,
                            trainable_params=trainable, total_params=total, base_sha256_before=before, base_sha256_after=after,
                            base_unchanged=before == after, final_loss=res.log[-1]["loss"]))

    # weight interpolation: no training
    base_model = s.model()
    base_params = params_of(base_model)
    tuned_params = params_of(s.model(str(model_path(run_dir, s3["adapted_model"]))))
    for alpha in cfg.interp_alphas:
        interpolate_(base_model, base_params, tuned_params, alpha)
        variants.append(measure(base_model, f"interp a={alpha:g}", "interpolation", alpha=alpha))

    curve = s3.get("curve", [])
    study = {
        "retention_floor": cfg.retention_floor,
        "variants": variants,
        "pareto_front": pareto_front(variants),
        "recommendation": recommend(variants, cfg.retention_floor, choose_fn),
        "curve": curve,
        "floor": floor_crossing(curve, cfg.retention_floor) if curve else None,
        "budget": {"steps": cfg.max_steps, "tokens_per_step": cfg.tokens_per_step, "protocol": s4["code"]["protocol"]},
        "notes": notes,
    }
    s4["study"] = study
    write_step(run_dir, 4, s4)
    return study


def study_table(study: dict) -> str:
    rows = [f"{'variant':<16}{'code ppl':>10}{'drop':>8}{'English ppl':>13}{'forgetting':>12}"]
    front = set(study["pareto_front"])
    for v in study["variants"]:
        mark = " *" if v["name"] in front else ""
        rows.append(f"{v['name']:<16}{v['code_ppl']:>10.2f}{100 * v['code_ppl_drop']:>7.1f}%{v['general_ppl']:>13.2f}"
                    f"{v['forgetting_ratio']:>12.3f}{mark}")
    rec = study["recommendation"]
    rows.append(f"(* on the Pareto front)  retention floor {study['retention_floor']}: choose {rec['name']}: {rec['reason']}")
    return "\n".join(rows)
