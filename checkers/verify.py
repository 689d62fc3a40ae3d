"""``grade --verify``: re-hash the run's files and re-evaluate its saved models under the recorded
protocol, so that a grade means what it says. It runs cptlab's own evaluation (never learner
code) and loads weights from safetensors only."""
from __future__ import annotations

import json
from pathlib import Path

from .report import Check, Report
from .safe_files import Unsafe, read_json, sha256
from .steps import Missing, close, get, load, num

# Same device type: only summation order differs. Another device type (a GPU run verified on a
# CPU, bf16 against fp32): perplexities agree to about 1%.
TOL_SAME_DEVICE = 1e-4
TOL_OTHER_DEVICE = 2e-2


def verify(run_dir: str | Path) -> Report:
    run = Path(run_dir)
    report = Report(5, "verify: files and models re-checked", str(run))

    def add(cid, expected, fn, hint):
        try:
            ok, got = fn()
        except Missing as exc:
            ok, got = False, str(exc)
        except Exception as exc:  # a broken model folder or data must fail the check, not the grader
            ok, got = False, f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        report.checks.append(Check(cid, bool(ok), expected, str(got), hint))
        return ok

    s1, _ = load(run, 1)
    s4, _ = load(run, 4)
    report.preset = s1.get("preset") if s1 else None

    def manifest():
        try:
            m = read_json(run, "manifest.json")
        except (Unsafe, FileNotFoundError, ValueError) as exc:
            return False, f"manifest.json: {exc}"
        if s1 is None or m.get("run_id") != s1.get("run_id"):
            return False, "manifest.json belongs to another run (run_id differs from step 1's)"
        files = m.get("files")
        if not isinstance(files, dict) or not files:
            return False, "manifest.json lists no files"
        unlisted = sorted(p.name for p in run.glob("step*_*.json") if p.name not in files)
        if unlisted:
            return False, f"results files missing from the manifest: {unlisted}"
        bad = []
        for name, digest in files.items():
            try:
                if sha256(run, name) != digest:
                    bad.append(name)
            except FileNotFoundError:
                bad.append(name)
            except Unsafe as exc:
                return False, f"refused: {exc}"
        return not bad, f"{len(files)} files, changed since the run: {bad or 'none'}"

    add("v.manifest", "every results and model file hashes as the run recorded it (manifest.json)", manifest,
        "a results file was edited, or a model folder replaced or copied from another run, after the run ended")

    if s1 is None or s4 is None:
        report.checks.append(Check("v.models", False, "steps 1 and 4 done", "missing results", "finish the lab before verifying"))
        return report

    from cptlab.config import LabConfig
    from cptlab.device import pick_device, setup_cpu
    from cptlab.measure import code_corpus, eval_tokens_sha, evaluate, general_stream
    from cptlab.sources import load_model, load_tokenizer

    setup_cpu()
    cfg = LabConfig.from_dict(get(s1, "config"))
    # re-evaluate at the precision the run used, whatever this machine would pick for "auto"
    recorded = str(get(s1, "code.protocol.precision"))
    cfg = cfg.replace(precision={"bfloat16": "bf16", "fp32": "fp32"}.get(recorded, cfg.precision))
    device = pick_device("auto")
    tol = TOL_SAME_DEVICE if get(s1, "device.type") == device.type else TOL_OTHER_DEVICE
    tok = load_tokenizer(get(s1, "base_model"))
    streams = {"code": code_corpus(cfg, tok)[0].val, "general": general_stream(cfg, tok)[0]}

    def same_tokens():
        got = {name: eval_tokens_sha(stream, cfg) for name, stream in streams.items()}
        want = {name: get(s1, f"{name}.tokens_sha") for name in streams}
        return got == want, f"rebuilt {got}, recorded {want}"

    add("v.eval_tokens", "the evaluation tokens rebuilt from the recorded config hash as recorded", same_tokens,
        "the data or tokenizer changed since the run: verify on the machine and data the run used")

    for label, model_key, results, prefix in (("base", "base_model", s1, "baseline"), ("adapted", "adapted_model", s4, "adapted")):
        def check(model_key=model_key, results=results, prefix=prefix):
            p = Path(str(get(results, model_key)))
            if not p.is_absolute() and (run / p).exists():
                p = run / p
            model = load_model(str(p)).to(device)
            parts = []
            ok = True
            for name, stream in streams.items():
                res = evaluate(model, stream, cfg, device, f"verify {prefix} {name}", progress=False)
                reported = num(results, f"{prefix}_{name}_ppl")
                ok &= close(res.ppl, reported, tol)
                parts.append(f"{name} {res.ppl:.6g} (reported {reported:.6g})")
            return ok, "; ".join(parts)

        add(f"v.{label}_model", f"the {label} model re-evaluated gives the reported perplexities (rel. tol. {tol:g})", check,
            f"the reported {prefix} perplexities do not come from the saved {label} model: numbers edited or model swapped")
    return report
