"""``grade --verify``: re-hash the run's files and re-evaluate its saved models under the recorded
protocol, so that a grade means what it says. It runs cptlab's own evaluation (never learner
code) and loads weights from safetensors only."""

from __future__ import annotations

import dataclasses
import json
import tempfile
from pathlib import Path

from checkers.core.report import Report, plainly
from checkers.core.safe_files import Unsafe, inside, read_json, sha256
from checkers.results.common import Missing, close, get, load, num, opt
from cptlab.core.config import LabConfig, get_config
from cptlab.data.sources import load_model, load_tokenizer
from cptlab.lab.pipeline import run_all
from cptlab.model.measure import code_corpus, eval_tokens_sha, evaluate, general_stream, resolve_base_model
from cptlab.speed.device import pick_device, setup_cpu

# Same device type: only summation order differs. Another device type (a GPU run verified on a
# CPU, bf16 against fp32): perplexities agree to about 1%.
TOL_SAME_DEVICE = 1e-4
TOL_OTHER_DEVICE = 2e-2
# A re-run of the CPT step: the same recipe and seed on the same device type agree to rounding
# (the learner's own loss and perplexity functions round differently from the library's by ~1e-6,
# which 150 steps amplify to ~1e-4); a changed recipe moves the perplexities by percents.
TOL_RETRAIN_SAME_DEVICE = 1e-3
TOL_RETRAIN_OTHER_DEVICE = 5e-2
# Settings that may differ from the preset without changing what is measured.
RUN_SETTINGS = {
    "seed",
    "device",
    "precision",
    "log_every",
    "torch_compile",
    "fused_ce",
    "eval_batch_size",
    "checkpoint_every",
}


def _explain(exc: Exception) -> tuple[str, str | None]:
    return (str(exc), None) if isinstance(exc, Missing) else plainly(exc)


def verify(run_dir: str | Path, preset: str | None = None, retrain: bool = False) -> Report:
    """Re-hash the files, then re-evaluate with the instructor's preset (its base model, data and
    recipe; the learner's recorded seed) and, with ``retrain``, re-run the CPT step itself. Each
    step below returns what it found; a broken model folder or data fails its check, never the grader."""
    run = Path(run_dir)
    report = Report(5, "verify: files and models re-checked", str(run), explain=_explain)
    s1, s3, s4 = (load(run, n)[0] for n in (1, 3, 4))
    report.preset = s1.get("preset") if s1 else None
    report.check(
        "v.manifest",
        "every results and model file hashes as the run recorded it (manifest.json)",
        lambda: manifest_matches(run, s1),
        "a results file was edited, or a model folder replaced or copied from another run, after the run ended",
    )
    if s1 is None or s4 is None:
        report.add("v.models", False, "steps 1 and 4 done", "missing results", "finish the lab before verifying")
        return report
    setup_cpu()
    expected = "the recorded configuration is the preset's recipe (the seed and hardware settings aside)"
    try:
        cfg = instructor_config(s1, preset)
    except Exception as exc:  # noqa: BLE001 - an unreadable config fails its check
        report.add("v.config", False, expected, *report.explain(exc))
        return report
    report.check(
        "v.config",
        expected,
        lambda: recipe_matches(s1, cfg),
        "run the lab with the preset's recipe: only the seed and hardware settings may differ",
    )
    device = pick_device("auto")
    tol = TOL_SAME_DEVICE if get(s1, "device.type") == device.type else TOL_OTHER_DEVICE
    base = resolve_base_model(cfg, progress=False)  # never the base model a results file names
    tok = load_tokenizer(base)
    streams = {"code": code_corpus(cfg, tok)[0].val, "general": general_stream(cfg, tok)[0]}
    report.check(
        "v.eval_tokens",
        "the evaluation tokens rebuilt from the preset's data and the recorded seed hash as recorded",
        lambda: same_tokens(streams, s1, cfg),
        "the data or tokenizer differ from the preset's: verify on the machine and data the run used",
    )
    for label, folder, results, prefix in (
        ("base", lambda: base, s1, "baseline"),
        ("adapted", lambda: adapted_folder(run, s4), s4, "adapted"),
    ):
        report.check(
            f"v.{label}_model",
            f"the {label} model re-evaluated gives the reported perplexities (rel. tol. {tol:g})",
            lambda folder=folder, results=results, prefix=prefix: reevaluate(
                folder(), streams, results, prefix, cfg, device, tol
            ),
            f"the reported {prefix} perplexities do not come from the {'preset' if label == 'base' else 'saved'} "
            f"{label} model",
        )
    if retrain:
        _retrain(report, cfg, s3, s4, get(s1, "device.type") == device.type)
    return report


def manifest_matches(run: Path, s1: dict | None) -> tuple[bool, str]:
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


def instructor_config(s1: dict, preset: str | None) -> LabConfig:
    """The instructor's recipe, data and base model with the learner's recorded seed and precision."""
    recorded = LabConfig.from_dict(get(s1, "config"))
    cfg = get_config(preset or recorded.preset, seed=recorded.seed)
    precision = str(get(s1, "code.protocol.precision"))
    return cfg.replace(precision={"bfloat16": "bf16", "fp32": "fp32"}.get(precision, cfg.precision))


def recipe_matches(s1: dict, cfg: LabConfig) -> tuple[bool, str]:
    recorded = LabConfig.from_dict(get(s1, "config"))
    diffs = [
        f.name
        for f in dataclasses.fields(LabConfig)
        if f.name not in RUN_SETTINGS and getattr(recorded, f.name) != getattr(cfg, f.name)
    ]
    if diffs:
        return False, f"differs from the {cfg.preset!r} preset in {diffs}"
    return True, f"the {cfg.preset!r} recipe, seed {cfg.seed}"


def same_tokens(streams: dict, s1: dict, cfg: LabConfig) -> tuple[bool, str]:
    got = {name: eval_tokens_sha(stream, cfg) for name, stream in streams.items()}
    want = {name: get(s1, f"{name}.tokens_sha") for name in streams}
    return got == want, f"rebuilt {got}, recorded {want}"


def adapted_folder(run: Path, s4: dict) -> str:
    rel = Path(str(get(s4, "adapted_model")))
    inside(run, rel / "config.json")  # inside the run folder, no symlinks
    return str(run / rel)


def reevaluate(folder: str, streams: dict, results: dict, prefix: str, cfg, device, tol: float) -> tuple[bool, str]:
    model = load_model(folder).to(device)
    parts, ok = [], True
    for name, stream in streams.items():
        res = evaluate(model, stream, cfg, device, f"verify {prefix} {name}", progress=False)
        reported = num(results, f"{prefix}_{name}_ppl")
        ok &= close(res.ppl, reported, tol)
        parts.append(f"{name} {res.ppl:.6g} (reported {reported:.6g})")
    return ok, "; ".join(parts)


def _retrain(report: Report, cfg: LabConfig, s3: dict | None, s4: dict, same_device: bool) -> None:
    """Run the CPT step again from the preset's recipe and the recorded seed; the log, the adapted
    perplexities and the study's rows must agree with the reported ones."""
    tol = TOL_RETRAIN_SAME_DEVICE if same_device else TOL_RETRAIN_OTHER_DEVICE
    with_study = isinstance(s4.get("study"), dict)
    expected = (
        f"CPT re-run from the preset's recipe and the recorded seed gives the reported perplexities (rel. tol. {tol:g})"
    )
    hint = "the reported run is not the recipe's run with this seed: another learning rate, step count or data"
    try:
        again, log = rerun_cpt(cfg, with_study, recorded_schedules(s4) if with_study else None)
    except Exception as exc:  # noqa: BLE001 - a re-run that fails is this check's failure
        report.add("v.retrain", False, expected, report.explain(exc)[0], hint)
        return
    report.check("v.retrain", expected, lambda: same_perplexities(again, s4, tol), hint)
    report.check(
        "v.retrain_log",
        f"every logged loss within {tol:g} of the re-run's",
        lambda: same_log(log, s3, tol),
        "the training log was edited, or comes from another run",
    )
    if with_study:
        report.check(
            "v.retrain_study",
            f"every variant of the study within {tol:g} of the re-run's, and the same recommendation",
            lambda: same_study(again, s4, tol),
            "the study's rows were edited, or come from another run",
        )


def recorded_schedules(s4: dict) -> dict[float, list[int]] | None:
    """Each replay variant's windows per step as the run recorded them: the learner's schedule is
    theirs to choose (any one that holds the share), so the re-run repeats it rather than the reference's."""
    out = {}
    for v in opt(s4, "study.variants") or []:
        if isinstance(v, dict) and v.get("choice") == "replay":
            counts = v.get("replay_windows_per_step")
            frac = v.get("replay_fraction")
            if isinstance(frac, (int, float)) and isinstance(counts, list):
                out[float(frac)] = counts
    return out or None


def rerun_cpt(cfg: LabConfig, with_study: bool, schedules: dict | None = None) -> tuple[dict, list[dict]]:
    """The whole run again in a temporary folder: its step-4 results and its step-3 log."""
    with tempfile.TemporaryDirectory(prefix="cptlab-verify-") as tmp:
        again = run_all(cfg, Path(tmp) / "run", progress=False, study=with_study, schedules=schedules)
        log = json.loads((Path(tmp) / "run" / "step3_cpt.json").read_text())["log"]
    return again, log


def same_perplexities(again: dict, s4: dict, tol: float) -> tuple[bool, str]:
    parts, ok = [], True
    for key in ("adapted_code_ppl", "adapted_general_ppl"):
        ok &= close(again[key], num(s4, key), tol)
        parts.append(f"{key} {again[key]:.6g} (reported {num(s4, key):.6g})")
    return ok, "; ".join(parts)


def same_log(log: list[dict], s3: dict | None, tol: float) -> tuple[bool, str]:
    mine = [r["loss"] for r in log]
    theirs = [num(r, "loss") for r in (s3 or {}).get("log", [])] if isinstance((s3 or {}).get("log"), list) else []
    if len(theirs) != len(mine):
        return False, f"{len(theirs)} logged steps, the re-run has {len(mine)}"
    worst = max(abs(a - b) / max(abs(b), 1e-12) for a, b in zip(theirs, mine))
    return worst <= tol, f"largest relative difference of a step's loss {worst:.2g}"


def same_study(again: dict, s4: dict, tol: float) -> tuple[bool, str]:
    mine = {v["name"]: v for v in again["study"]["variants"]}
    theirs = {str(v.get("name")): v for v in get(s4, "study.variants") if isinstance(v, dict)}
    if set(mine) != set(theirs):
        return False, f"variants {sorted(theirs)}, the re-run has {sorted(mine)}"
    off = [
        n
        for n, v in mine.items()
        if not (
            close(num(theirs[n], "code_ppl"), v["code_ppl"], tol)
            and close(num(theirs[n], "general_ppl"), v["general_ppl"], tol)
        )
    ]
    rec = get(s4, "study.recommendation.name"), again["study"]["recommendation"]["name"]
    return not off and rec[0] == rec[1], f"variants off: {off or 'none'}; recommended {rec[0]}, re-run {rec[1]}"
