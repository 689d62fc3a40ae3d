"""Flags for an instructor, never verdicts: answer cells that reach the grader or the library's
references, and near-copies between learners.
"""

from __future__ import annotations

import ast
import hashlib
import io

from checkers.grading.result import LearnerResult
from checkers.grading.submissions import normalise

REFERENCE_NAMES = {  # the library's references of the functions a learner writes, by the names it exports them
    "perplexity",
    "learner_perplexity",
    "split_streams",
    "split_documents",
    "pack",
    "to_blocks",
    "lr_multiplier",
    "Schedule",
    "ReferenceStep",
    "cpt_loop",
    "code_ppl_drop",
    "forgetting_ratio",
    "recommend",
    "_scenario_answers",
    "build_corpus",
    "replay_counts",
    "lora_model",
    "load_interpolated",
}


def reaches_reference(source: str) -> list[str]:
    """What an answer cell reaches that it should not: the grader's package, the library's reference
    of a function the learner writes, or a dynamic import (read from the syntax tree; a flag, not a verdict)."""
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return []
    found = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            mods = [node.module or ""] if isinstance(node, ast.ImportFrom) else [a.name for a in node.names]
            for m in mods:
                if m.split(".")[0] in ("checkers", "cptlab", "importlib"):
                    names = [a.name for a in node.names] if isinstance(node, ast.ImportFrom) else []
                    if m.split(".")[0] != "cptlab" or set(names) & REFERENCE_NAMES or not names or m != "cptlab":
                        found.append(f"imports {m}" + (f" ({', '.join(names)})" if names else ""))
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id in ("__import__", "getattr", "eval", "exec")
        ):
            if node.func.id != "getattr" or any(
                isinstance(a, ast.Constant) and a.value in REFERENCE_NAMES for a in node.args
            ):
                found.append(f"calls {node.func.id}")
        elif isinstance(node, ast.Attribute) and node.attr in REFERENCE_NAMES | {"checkers", "exercises"}:
            found.append(f"uses .{node.attr}")
    return sorted(set(found))


# The library's reference of each function a learner writes, as the release ships it: an answer
# that holds most of one is flagged with the reference's name.
REFERENCE_OF = {
    "corpus_perplexity": "cptlab.model.perplexity:learner_perplexity",
    "pack_documents": "cptlab.data.corpus:pack",
    "split_documents": "cptlab.data.corpus:split_streams",
    "to_blocks": "cptlab.data.corpus:to_blocks",
    "lr_at": "cptlab.model.schedule:lr_multiplier",
    "optimizer_step": "cptlab.model.train:ReferenceStep",
    "cpt_loop": "cptlab.model.loop:cpt_loop",
    "flops_per_token": "cptlab.speed.flops:flops_per_token",
    "mfu": "cptlab.speed.flops:model_flops_utilization",
    "code_ppl_drop": "cptlab.lab.steps:code_ppl_drop",
    "forgetting_ratio": "cptlab.lab.steps:forgetting_ratio",
    "replay_schedule": "cptlab.data.corpus:replay_counts",
    "interpolate": "cptlab.lab.study:interpolate",
    "lora_config": "cptlab.lab.study:lora_config",
    "choose_variant": "cptlab.lab.study:recommend",
    "production_choices": "checkers.code.scenarios:_scenario_answers",
}
K_GRAM, WINDOW = 25, 1  # copydetect's noise threshold (characters of normalised tokens) and window
# A reference of fewer fingerprints is a line or two that any right answer repeats (to_blocks, mfu,
# the two ratios): a copy of it shows nothing
MIN_FINGERPRINTS = 40


def _fingerprint(code: str):
    import copydetect

    try:
        return copydetect.CodeFingerprint("answers.py", K_GRAM, WINDOW, fp=io.StringIO(code), language="python")
    except Exception:  # noqa: BLE001 - code that does not tokenize is not compared
        return None


def reference_source(name: str) -> str:
    """The source of the library's reference of the learner function ``name``."""
    import importlib
    import inspect

    module, attr = REFERENCE_OF[name].split(":")
    return inspect.getsource(getattr(importlib.import_module(module), attr))


def _bare(source: str) -> str:
    """Code without docstrings and type annotations: what a paste keeps when it drops them."""
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return source
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(getattr(body[0], "value", None), ast.Constant):
                node.body = body[1:] or [ast.Pass()]
            if not isinstance(node, ast.ClassDef):
                node.returns = None
                for a in node.args.args + node.args.kwonlyargs + node.args.posonlyargs:
                    a.annotation = None
    return ast.unparse(tree)


def reference_copies(source: str, threshold: float = 0.9) -> list[str]:
    """Flags for an answer cell holding most of the library's reference of a function it defines:
    the share of the reference's fingerprints (copydetect's winnowed k-grams, docstrings and
    annotations left out on both sides) found in the cell. The solutions hold at most 72% of theirs
    (flops_per_token: one formula), a pasted reference all of it."""
    import copydetect

    mine = _fingerprint(_bare(source))
    found = []
    for fn in defined_names(source):
        if fn not in REFERENCE_OF or mine is None:
            continue
        ref = _fingerprint(_bare(reference_source(fn)))
        if ref is None or len(ref.hashes) < MIN_FINGERPRINTS:
            continue
        _, (_, of_ref), _ = copydetect.compare_files(mine, ref)
        if of_ref >= threshold:
            module, attr = REFERENCE_OF[fn].split(":")
            found.append(f"{fn}: {100 * of_ref:.0f}% of the library's reference {module}.{attr}")
    return found


def defined_names(source: str) -> list[str]:
    try:
        return [n.name for n in ast.parse(source).body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]
    except SyntaxError:
        return []


def flag_copies(results: list[LearnerResult], threshold: float = 0.8) -> None:
    """Near-copies of learner code (copydetect's winnowed fingerprints: renamed variables and
    reordered statements still match) and identical written answers: flags, never verdicts."""
    import copydetect

    own = [(r, _fingerprint(r.code)) for r in results if r.code.strip()]  # r.code: the answers written, no stubs
    for i, (a, fa) in enumerate(own):
        for b, fb in own[i + 1 :]:
            if fa is None or fb is None:
                continue
            _, (sim_a, sim_b), _ = copydetect.compare_files(fa, fb)
            sim = min(sim_a, sim_b)
            if sim >= threshold:
                a.flags.append(f"code {100 * sim:.0f}% similar to {b.learner}")
                b.flags.append(f"code {100 * sim:.0f}% similar to {a.learner}")
    groups: dict[str, list[str]] = {}
    for r in results:
        text = normalise(" ".join(r.answers[k] for k in sorted(r.answers)))
        if text and "YOUR ANSWER HERE" not in text:
            groups.setdefault(hashlib.sha256(text.encode()).hexdigest(), []).append(r.learner)
    for names in groups.values():
        if len(names) > 1:
            for r in results:
                if r.learner in names:
                    r.flags.append(f"identical written answers to {', '.join(n for n in names if n != r.learner)}")
