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


def flag_copies(results: list[LearnerResult], threshold: float = 0.8) -> None:
    """Near-copies of learner code (copydetect's winnowed fingerprints: renamed variables and
    reordered statements still match) and identical written answers: flags, never verdicts."""
    import copydetect

    def fingerprint(code: str):
        try:
            return copydetect.CodeFingerprint("answers.py", 25, 1, fp=io.StringIO(code), language="python")
        except Exception:  # noqa: BLE001 - code that does not tokenize is not compared
            return None

    own = [(r, fingerprint(r.code)) for r in results if r.code.strip() and "NotImplementedError" not in r.code]
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
