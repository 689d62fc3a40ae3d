"""Step 4 as a trade-off study: the forgetting curve, a retention floor, and the four production
choices (pure CPT, replay mixing, LoRA on frozen weights, weight interpolation) measured with the
same budget and the same evaluation protocol and tokens as the headline numbers."""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch

from cptlab.core.config import LabConfig
from cptlab.core.results import read_step, write_step
from cptlab.core.uncertainty import METHOD, MIN_UNITS, describe, difference_interval
from cptlab.data.corpus import eos_join_stream, replay_batches
from cptlab.data.sources import load_documents
from cptlab.model.measure import (
    StepSetup,
    baseline_of,
    config_of,
    floor_crossing,
    general_stream,
    model_path,
    rescored,
    run_corpus,
    scored,
)
from cptlab.model.train import Hooks, train
from cptlab.speed.device import seed_everything


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


LORA_TARGETS = {"all_linear": ["c_attn", "c_proj", "c_fc"], "attention": ["attn.c_attn", "attn.c_proj"]}


def lora_config(r: int, alpha: int):
    """LoRA for GPT-2 (the reference of notebook 4's ``lora_config``): adapters on every linear layer
    (``c_attn``, ``c_proj``, ``c_fc``), which are ``Conv1D`` modules storing their weight as [in, out],
    hence ``fan_in_fan_out``; no dropout, no bias trained, nothing else saved: the base stays frozen."""
    from peft import LoraConfig

    return LoraConfig(
        r=r,
        lora_alpha=alpha,
        lora_dropout=0.0,
        bias="none",
        target_modules=LORA_TARGETS["all_linear"],
        fan_in_fan_out=True,
    )


def lora_model(model, cfg: LabConfig, config_fn=None):
    """``model`` with LoRA adapters, from ``config_fn(r, alpha)`` (the learner's, in notebook 4) when
    the run asks for all linear layers, else the reference set-up for ``cfg.lora_targets``."""
    from peft import LoraConfig, get_peft_model

    if cfg.lora_targets == "all_linear":
        config = (config_fn or lora_config)(cfg.lora_r, cfg.lora_alpha)
        if not isinstance(config, LoraConfig):
            raise TypeError(f"lora_config returned {type(config).__name__}, not a peft.LoraConfig: run its check cell")
    else:
        config = lora_config(cfg.lora_r, cfg.lora_alpha)
        config.target_modules = LORA_TARGETS[cfg.lora_targets]
    return get_peft_model(model, config)


# ----------------------------------------------------------------------------- interpolation
@torch.no_grad()
def interpolate(base: dict[str, torch.Tensor], cpt: dict[str, torch.Tensor], alpha: float) -> dict[str, torch.Tensor]:
    """theta(alpha) = (1 - alpha) theta_base + alpha theta_cpt, tensor by tensor (WiSE-FT), as new
    tensors; integer buffers are copied from the base (the reference of notebook 4's ``interpolate``)."""
    return {
        k: (1.0 - alpha) * base[k] + alpha * cpt[k] if base[k].is_floating_point() else base[k].clone() for k in base
    }


def load_interpolated(model, state) -> None:
    """Load a learner's interpolated state, or say in one line what is wrong with it."""
    own = model.state_dict()
    if not isinstance(state, dict) or set(state) != set(own):
        got = sorted(state)[:3] if isinstance(state, dict) else type(state).__name__
        raise ValueError(
            f"interpolate returned {got}..., not the model's {len(own)} state-dict keys: run its check cell"
        )
    bad = [k for k in own if not isinstance(state[k], torch.Tensor) or state[k].shape != own[k].shape]
    if bad:
        raise ValueError(f"interpolate returned a wrong tensor for {bad[0]}: run its check cell")
    model.load_state_dict(state)


def _names(targets) -> list[str]:
    return [targets] if isinstance(targets, str) else sorted(targets)


def _same_weights(state: dict[str, torch.Tensor], **others: dict[str, torch.Tensor]) -> str | None:
    """The name of the state in ``others`` that ``state`` equals exactly, if one does."""
    for name, other in others.items():
        if all(torch.equal(state[k], other[k]) for k in other):
            return name
    return None


def state_of(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


# ----------------------------------------------------------------------------- the decision
def recommend(variants: list[dict], floor: float, choose_fn=None) -> dict:
    """The largest code gain whose forgetting ratio stays at or under the floor (or the variant
    ``choose_fn(variants, floor)`` names: the learner's rule in notebook 4)."""
    under = [v for v in variants if v["forgetting_ratio"] <= floor]
    if choose_fn is not None:
        name = choose_fn([dict(v) for v in variants], floor)
        best = next((v for v in variants if v["name"] == name), None)
        if best is None:
            raise ValueError(
                f"{getattr(choose_fn, '__name__', 'choose_fn')} returned {name!r}, not one of the variants' names "
                f"{[v['name'] for v in variants]}: run its check cell"
            )
        why = (
            f"chosen by {getattr(choose_fn, '__name__', 'choose_fn')}: code perplexity drop "
            f"{100 * best['code_ppl_drop']:.1f}%, "
            f"forgetting_ratio {best['forgetting_ratio']:.3f} (floor {floor})"
        )
    elif under:
        best = max(under, key=lambda v: v["code_ppl_drop"])
        why = (
            f"largest code perplexity drop ({100 * best['code_ppl_drop']:.1f}%) among the {len(under)} variant(s) "
            f"with forgetting_ratio <= {floor}"
        )
    else:
        best = min(variants, key=lambda v: v["forgetting_ratio"])
        why = f"no variant stays under the floor {floor}; this one forgets least ({best['forgetting_ratio']:.3f})"
    return {
        "name": best["name"],
        "choice": best["choice"],
        "code_ppl_drop": best["code_ppl_drop"],
        "forgetting_ratio": best["forgetting_ratio"],
        "reason": why,
    }


def within_floor(v: dict, floor: float) -> str:
    """Where a variant's forgetting interval lies against the floor: "under", "over", or "straddles"
    (its ratio is under or over the floor by less than the evaluation set can tell)."""
    ci = v.get("forgetting_ratio_ci")
    if ci is None:
        return "under" if v["forgetting_ratio"] <= floor else "over"
    return "under" if ci["high"] <= floor else "over" if ci["low"] > floor else "straddles"


def noise(variants: list[dict], floor: float, base_units: dict | None, choose_fn=None) -> dict:
    """What the evaluation set can tell about the choice: for each other variant under the floor,
    the paired interval of the chosen variant's code-drop lead over it; leads whose interval holds
    0 are within noise."""
    best = recommend(variants, floor, choose_fn)["name"]
    chosen = next(v for v in variants if v["name"] == best)
    rows, tied = [], []
    for v in variants:
        if v is chosen or v["forgetting_ratio"] > floor or not v.get("code_units") or base_units is None:
            continue
        diff = difference_interval(base_units, chosen["code_units"], v["code_units"])
        rows.append({"versus": v["name"], "lead": diff})
        if diff["low"] <= 0 <= diff["high"]:
            tied.append(v["name"])
    if base_units is not None and len(base_units["nll"]) < MIN_UNITS:
        return {
            "leads": rows,
            "within_noise": tied,
            "floor_position": chosen.get("within_floor"),
            "noise_note": (
                f"the code set holds {len(base_units['nll'])} document piece(s), too few for the intervals "
                "to say what is noise (the smoke preset is for seconds, not conclusions)"
            ),
        }
    note = (
        f"{best} and {', '.join(tied)} are within noise on this evaluation set (the paired 95% interval of the "
        f"difference in code drop holds 0)"
        if tied
        else f"{best}'s lead over every other variant under the floor is outside noise"
        if rows
        else ""
    )
    ci = chosen.get("forgetting_ratio_ci")
    if chosen.get("within_floor") == "straddles" and ci:
        safe = [v for v in variants if v.get("within_floor") == "under"]
        safest = max(safe, key=lambda v: v["code_ppl_drop"])["name"] if safe else None
        note += (
            f". Its forgetting ratio's interval [{ci['low']:.3f}, {ci['high']:.3f}] straddles the floor {floor}: on "
            "other "
            f"documents it could be over"
            + (f"; {safest} is the best variant whose whole interval is under it" if safest else "")
        )
    return {"leads": rows, "within_noise": tied, "noise_note": note, "floor_position": chosen.get("within_floor")}


def pareto_front(variants: list[dict]) -> list[str]:
    """Names of variants no other variant beats on both gain and forgetting."""
    front = []
    for v in variants:
        dominated = any(
            o is not v
            and o["code_ppl_drop"] >= v["code_ppl_drop"]
            and o["forgetting_ratio"] <= v["forgetting_ratio"]
            and (o["code_ppl_drop"] > v["code_ppl_drop"] or o["forgetting_ratio"] < v["forgetting_ratio"])
            for o in variants
        )
        if not dominated:
            front.append(v["name"])
    return front


def run_study(
    run_dir: str | Path,
    progress: bool = True,
    choose_fn=None,
    schedule_fn=None,
    interpolate_fn=None,
    lora_fn=None,
) -> dict:
    """Measure every variant, add the study to ``step4_tradeoff.json``, return it. The learner's
    functions of notebook 4 build the choices when given (``None``: the reference): ``choose_fn(variants,
    floor) -> name`` the decision rule, ``schedule_fn(fraction, windows_per_step, steps)`` the replay
    windows of each step, ``interpolate_fn(base_state, cpt_state, alpha)`` the interpolation, ``lora_fn(r, alpha)``
    the LoRA set-up."""
    cfg = config_of(run_dir)
    s1, s3, s4 = read_step(run_dir, 1), read_step(run_dir, 3), read_step(run_dir, 4)
    s = StepSetup(cfg, s1["base_model"])
    blocks, val = run_corpus(run_dir)
    english_eval, _ = general_stream(cfg, s.tokenizer)
    baseline = baseline_of(s1, s3.get("curve"))
    if "code_ppl_drop_ci" not in s4:
        raise RuntimeError(
            "step 4's results were made by an older cptlab, without confidence intervals: "
            "re-run step 3 (notebooks/03_cpt.ipynb), then step 4"
        )

    def measure(model, name: str, choice: str, **extra) -> dict:
        return scored(
            model,
            name,
            val,
            english_eval,
            cfg,
            s.device,
            s.tokenizer.eos_token_id,
            baseline,
            progress,
            choice=choice,
            **extra,
        )

    variants = [
        {
            "name": "pure CPT",
            "choice": "pure_cpt",
            "code_ppl": s4["adapted_code_ppl"],
            "general_ppl": s4["adapted_general_ppl"],
            "code_nll_sum": s4["code"]["nll_sum"],
            "code_tokens": s4["code"]["tokens"],
            "general_nll_sum": s4["general"]["nll_sum"],
            "general_tokens": s4["general"]["tokens"],
            "code_ppl_drop": s4["code_ppl_drop"],
            "forgetting_ratio": s4["forgetting_ratio"],
            "replay_fraction": 0.0,
            "code_units": s4["code"]["units"],
            "general_units": s4["general"]["units"],
            "code_ppl_drop_ci": s4["code_ppl_drop_ci"],
            "forgetting_ratio_ci": s4["forgetting_ratio_ci"],
        }
    ]

    # replay mixing: English the base model was pre-trained on, never the English evaluation set
    notes = []
    if cfg.replay_source is not None:
        eng_docs, _ = load_documents(cfg.replay_source)
        english = eos_join_stream(eng_docs, s.tokenizer)
        for frac in cfg.replay_fractions:
            seed_everything(cfg.seed)
            record: list[int] = []
            model = s.model()
            res = train(
                model,
                blocks,
                cfg,
                s.device,
                s.amp,
                progress=progress,
                desc=f"replay {frac:.0%}",
                hooks=Hooks(batch_fn=replay_batches(blocks, english, cfg, frac, record, schedule_fn)),
            )
            windows = len(record) * cfg.batch_size * cfg.grad_accum
            variants.append(
                measure(
                    model,
                    f"replay {frac:.0%}",
                    "replay",
                    replay_fraction=frac,
                    replay_windows_per_step=record,
                    replay_windows=sum(record),
                    windows=windows,
                    replay_fraction_realised=sum(record) / windows,
                    final_loss=res.log[-1]["loss"],
                )
            )
    else:
        notes.append("replay skipped: no replay_source (English disjoint from the evaluation set) is configured")

    # LoRA on frozen weights
    seed_everything(cfg.seed)
    model = s.model()
    before = base_weights_digest(model)
    peft_model = lora_model(model, cfg, lora_fn)
    trainable = sum(p.numel() for p in peft_model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in peft_model.parameters())
    res = train(peft_model, blocks, cfg.replace(cpt_lr=cfg.lora_lr), s.device, s.amp, progress=progress, desc="LoRA")
    after = base_weights_digest(peft_model)
    merged = peft_model.merge_and_unload()
    variants.append(
        measure(
            merged,
            f"LoRA r={cfg.lora_r}",
            "lora",
            lora_r=cfg.lora_r,
            lora_alpha=cfg.lora_alpha,
            lora_lr=cfg.lora_lr,
            lora_targets=cfg.lora_targets,
            lora_modules=_names(peft_model.peft_config["default"].target_modules),
            trainable_params=trainable,
            total_params=total,
            base_sha256_before=before,
            base_sha256_after=after,
            base_unchanged=before == after,
            final_loss=res.log[-1]["loss"],
        )
    )

    # weight interpolation: no training
    base_model = s.model()
    base_state = state_of(base_model)
    cpt_state = state_of(s.model(str(model_path(run_dir, s3["adapted_model"]))))
    # an interpolation whose weights are the base's or the CPT run's, bit for bit, has their numbers:
    # steps 1 and 4 scored those weights on these tokens (a = 0 and 1 with the reference)
    known = {
        "base": (s1["code"], s1["general"], "the base model's weights: step 1's numbers"),
        "cpt": (s4["code"], s4["general"], "the CPT run's weights: step 4's numbers"),
    }
    for alpha in cfg.interp_alphas:
        load_interpolated(base_model, (interpolate_fn or interpolate)(base_state, cpt_state, alpha))
        name = f"interp a={alpha:g}"
        same = _same_weights(base_model.state_dict(), base=base_state, cpt=cpt_state)
        rec = None
        if same:
            code, general, why = known[same]
            rec = rescored(code, general, name, baseline, choice="interpolation", alpha=alpha, scored_as=why)
        variants.append(rec or measure(base_model, name, "interpolation", alpha=alpha))
    for v in variants:
        v["within_floor"] = within_floor(v, cfg.retention_floor)

    curve = s3.get("curve", [])
    study = {
        "retention_floor": cfg.retention_floor,
        "variants": variants,
        "pareto_front": pareto_front(variants),
        "recommendation": {
            **recommend(variants, cfg.retention_floor, choose_fn),
            **noise(variants, cfg.retention_floor, baseline["code_units"], choose_fn),
        },
        "curve": curve,
        "floor": floor_crossing(curve, cfg.retention_floor) if curve else None,
        "budget": {"steps": cfg.max_steps, "tokens_per_step": cfg.tokens_per_step, "protocol": s4["code"]["protocol"]},
        "notes": notes,
    }
    s4["study"] = study
    write_step(run_dir, 4, s4)
    return study


def study_table(study: dict) -> str:
    """Every variant with its code drop and forgetting ratio and their paired 95% intervals."""
    rows = [
        f"{'variant':<15}{'code ppl':>9}  {'code drop [95% CI]':<22}{'English ppl':>11}  "
        f"{'forgetting [95% CI]':<22}floor"
    ]
    front = set(study["pareto_front"])
    for v in study["variants"]:
        mark = " *" if v["name"] in front else ""
        drop = (
            describe(v["code_ppl_drop_ci"], percent=True)
            if v.get("code_ppl_drop_ci")
            else f"{100 * v['code_ppl_drop']:.1f}%"
        )
        ratio = describe(v["forgetting_ratio_ci"]) if v.get("forgetting_ratio_ci") else f"{v['forgetting_ratio']:.3f}"
        rows.append(
            f"{v['name'] + mark:<15}{v['code_ppl']:>9.1f}  {drop:<22}{v['general_ppl']:>11.2f}  "
            f"{ratio:<22}{v.get('within_floor', '')}"
        )
    rec = study["recommendation"]
    rows.append(
        f"(* on the Pareto front; intervals: paired {METHOD}) retention floor {study['retention_floor']}: "
        f"choose {rec['name']}: {rec['reason']}"
    )
    if rec.get("noise_note"):
        rows.append(rec["noise_note"])
    return "\n".join(rows)
