"""Flags for an instructor, never verdicts: answer cells that reach the grader or the library's
references, and near-copies between learners (copies of the library itself: ``library_copies``).
"""

from __future__ import annotations

import ast
import hashlib
import io
import statistics

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


K_GRAM, WINDOW = 25, 1  # copydetect's noise threshold (characters of normalised tokens) and window
# A classmate pair is flagged when its similarity is at least SIMILAR and stands out of the class's
# own: above the median pair by OUTLIER robust deviations (1.4826 x the median absolute deviation).
# A class whose learners all start from the same notebooks is similar everywhere; only a pair well
# above that is a lead.
SIMILAR, OUTLIER, MIN_PAIRS = 0.8, 3.0, 6


def _fingerprint(code: str):
    import copydetect

    try:
        return copydetect.CodeFingerprint("answers.py", K_GRAM, WINDOW, fp=io.StringIO(code), language="python")
    except Exception:  # noqa: BLE001 - code that does not tokenize is not compared
        return None


def defined_names(source: str) -> list[str]:
    try:
        return [n.name for n in ast.parse(source).body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]
    except SyntaxError:
        return []


def stands_out(sims: list[float], threshold: float = SIMILAR) -> float:
    """The similarity a pair needs to be flagged in a class with these pair similarities."""
    if len(sims) < MIN_PAIRS:
        return threshold
    med = statistics.median(sims)
    mad = 1.4826 * statistics.median(abs(x - med) for x in sims)
    return max(threshold, min(1.0, med + OUTLIER * max(mad, 0.01)))


def flag_copies(results: list[LearnerResult], threshold: float = SIMILAR) -> None:
    """Near-copies of learner code (copydetect's winnowed fingerprints: renamed variables and
    reordered statements still match), flagged only where a pair stands out of the class's typical
    similarity, and identical written answers: flags, never verdicts."""
    import copydetect

    own = [(r, _fingerprint(r.code)) for r in results if r.code.strip()]  # r.code: the answers written, no stubs
    pairs = []
    for i, (a, fa) in enumerate(own):
        for b, fb in own[i + 1 :]:
            if fa is None or fb is None:
                continue
            _, (sim_a, sim_b), _ = copydetect.compare_files(fa, fb)
            pairs.append((a, b, min(sim_a, sim_b)))
    need = stands_out([sim for _, _, sim in pairs], threshold)
    for a, b, sim in pairs:
        if sim >= need:
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
