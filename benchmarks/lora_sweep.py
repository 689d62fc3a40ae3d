"""Why LoRA gains less and forgets more than full CPT on the tiny preset: a sweep a practitioner
would run. LoRA over learning rate x rank x target modules, and full CPT over learning rate (which
traces the gain/forgetting curve that LoRA is compared with at matched code gain). Same corpus,
steps, tokens, seed and evaluation tokens as the run folder's headline numbers; every number with
its paired 95% interval. Notebook 4 reads the JSON it writes.

    python benchmarks/lora_sweep.py --run runs/latest --out benchmarks/lora_sweep_tiny.json
"""

from __future__ import annotations

import argparse
import sys
import time

from cptlab.core.results import read_step, write_json_atomic
from cptlab.lab.study import lora_model
from cptlab.model.measure import StepSetup, baseline_of, config_of, general_stream, run_corpus, scored
from cptlab.model.train import train
from cptlab.speed.device import seed_everything

FULL_LRS = (1e-5, 2e-5, 5e-5, 1e-4)
LORA_LRS = (1e-4, 5e-4, 1e-3)
LORA_RANKS = (8, 64)
LORA_TARGETS = ("all_linear", "attention")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", required=True, help="a run folder with steps 1-3 done (the corpus, the baseline)")
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    cfg = config_of(args.run)
    s1, s3 = read_step(args.run, 1), read_step(args.run, 3)
    s = StepSetup(cfg, s1["base_model"])
    blocks, val = run_corpus(args.run)
    english, _ = general_stream(cfg, s.tokenizer)
    base = baseline_of(s1, s3.get("curve"))
    rows = []

    def record(model, name: str, **extra) -> None:
        rec = scored(model, name, val, english, cfg, s.device, s.tokenizer.eos_token_id, base, **extra)
        for k in ("code_units", "general_units"):
            rec.pop(k)
        rows.append(rec)
        print(
            f"{name:<34} drop {100 * rec['code_ppl_drop']:5.1f}% [{100 * rec['code_ppl_drop_ci']['low']:.1f}, "
            f"{100 * rec['code_ppl_drop_ci']['high']:.1f}]  forgetting {rec['forgetting_ratio']:.4f} "
            f"[{rec['forgetting_ratio_ci']['low']:.4f}, {rec['forgetting_ratio_ci']['high']:.4f}]  "
            f"{extra.get('seconds', 0):.0f}s",
            flush=True,
        )

    for lr in FULL_LRS:
        t0 = time.perf_counter()
        seed_everything(cfg.seed)
        model = s.model()
        res = train(model, blocks, cfg.replace(cpt_lr=lr), s.device, s.amp, progress=False)
        record(
            model,
            f"full CPT lr={lr:g}",
            kind="full",
            lr=lr,
            trainable_params=sum(p.numel() for p in model.parameters()),
            final_loss=res.log[-1]["loss"],
            max_grad_norm=max(r["grad_norm"] for r in res.log),
            seconds=time.perf_counter() - t0,
        )
    for targets in LORA_TARGETS:
        for r in LORA_RANKS:
            for lr in LORA_LRS:
                t0 = time.perf_counter()
                seed_everything(cfg.seed)
                lcfg = cfg.replace(lora_r=r, lora_alpha=2 * r, lora_lr=lr, lora_targets=targets)
                peft_model = lora_model(s.model(), lcfg)
                trainable = sum(p.numel() for p in peft_model.parameters() if p.requires_grad)
                res = train(peft_model, blocks, lcfg.replace(cpt_lr=lr), s.device, s.amp, progress=False)
                record(
                    peft_model.merge_and_unload(),
                    f"LoRA {targets} r={r} lr={lr:g}",
                    kind="lora",
                    lr=lr,
                    lora_r=r,
                    lora_alpha=2 * r,
                    lora_targets=targets,
                    trainable_params=trainable,
                    final_loss=res.log[-1]["loss"],
                    max_grad_norm=max(x["grad_norm"] for x in res.log),
                    seconds=time.perf_counter() - t0,
                )
    write_json_atomic(
        args.out,
        {
            "preset": cfg.preset,
            "seed": cfg.seed,
            "steps": cfg.max_steps,
            "tokens_per_step": cfg.tokens_per_step,
            "retention_floor": cfg.retention_floor,
            "baseline": {"code_ppl": base["code_ppl"], "general_ppl": base["general_ppl"]},
            "protocol": s1["code"]["protocol"],
            "rows": rows,
        },
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
