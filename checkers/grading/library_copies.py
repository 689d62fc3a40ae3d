"""Copies of the shipped library in a learner's answers: every function an answer cell defines is
compared with every reference function the release ships (``cptlab/`` and the answer key), on a
form that ignores names, literals, comments, docstrings and the signature, so a pasted body keeps
its match under another name, renamed variables or an inlined constant. A flag, never a verdict.

The form: the function's body as Python tokens, each identifier and each literal one placeholder,
keywords and operators kept; its fingerprints are the winnowed k-grams of that stream (Schleimer,
Wilkerson and Aiken, 2003, as MOSS and copydetect compute them; copydetect's own winnowing here).
"""

from __future__ import annotations

import ast
import hashlib
import importlib
import inspect
import io
import keyword
import tokenize
import zlib
from functools import lru_cache

import numpy as np

# The library's reference of each function a learner writes, as the release ships it.
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
K_TOKENS, WINDOW = 5, 3  # a k-gram of 5 tokens: an inserted factor breaks few of them; winnowing window
# A body of fewer fingerprints is a line or two that any right answer repeats (to_blocks, mfu, the
# two ratios): a match with it shows nothing.
MIN_FINGERPRINTS = 12
# The share of a reference's fingerprints an answer must hold to be flagged, calibrated on honest
# answers (tests/test_library_copies.py: the solutions and independent right answers stay at or below
# 0.65 against every reference but the two below; pasted bodies, renamed or not, at 0.82 and above).
THRESHOLD = 0.75
# References whose shape the notebook dictates: the FLOPs formula is given term by term (a right
# answer *is* the reference: never a sign of copying), and the loop is written against the lab's own
# ``run`` object (honest loops hold up to 0.75 of it): only a near-verbatim paste counts there.
DICTATED = {"cptlab.speed.flops.flops_per_token": None, "cptlab.model.loop.cpt_loop": 0.92}
_PLACEHOLDER = {tokenize.NAME: "n", tokenize.NUMBER: "n", tokenize.STRING: "n"}
# Python 3.12 tokenizes f-strings into parts: the whole f-string is one literal
_FSTRING = tuple(getattr(tokenize, t, -1) for t in ("FSTRING_START", "FSTRING_MIDDLE", "FSTRING_END"))
_SKIP = {
    tokenize.COMMENT,
    tokenize.NL,
    tokenize.NEWLINE,
    tokenize.INDENT,
    tokenize.DEDENT,
    tokenize.ENCODING,
    tokenize.ENDMARKER,
}


def _bodies(source: str) -> list[tuple[str, str]]:
    """Each top-level function's (or class's) name and its body without docstring, as source."""
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return []
    out = []
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            body = list(node.body)
            if body and isinstance(body[0], ast.Expr) and isinstance(getattr(body[0], "value", None), ast.Constant):
                body = body[1:]
            if isinstance(node, ast.ClassDef):  # a class's methods, each without its docstring
                for m in body:
                    if isinstance(m, (ast.FunctionDef, ast.AsyncFunctionDef)) and m.body:
                        first = m.body[0]
                        if isinstance(first, ast.Expr) and isinstance(getattr(first, "value", None), ast.Constant):
                            m.body = m.body[1:] or [ast.Pass()]
            out.append((node.name, "\n".join(ast.unparse(b) for b in body)))
    return out


def normalised(code: str) -> str:
    """``code`` as one character a token: identifiers and literals alike ``n``, keywords and operators
    kept (each keyword one letter of its own), layout and comments dropped."""
    chars = []
    try:
        for tok in tokenize.generate_tokens(io.StringIO(code).readline):
            if tok.type in _SKIP:
                continue
            if tok.type == tokenize.NAME and keyword.iskeyword(tok.string):
                chars.append(chr(0x100 + keyword.kwlist.index(tok.string)))
            elif tok.type in _PLACEHOLDER or tok.type == _FSTRING[0]:
                chars.append("n")
            elif tok.type in _FSTRING[1:]:
                continue
            elif len(tok.string) == 1:
                chars.append(tok.string)
            else:  # an operator of two or three characters: one character, the same in every process
                chars.append(chr(0x200 + zlib.crc32(tok.string.encode()) % 0x100))
    except (tokenize.TokenError, IndentationError, SyntaxError):
        return ""
    return "".join(chars)


def fingerprints(code: str) -> set[int]:
    """The winnowed k-gram hashes of ``code``'s normalised token stream."""
    from copydetect.utils import winnow

    doc = normalised(code)
    if len(doc) < K_TOKENS:
        return set()
    # each k-gram hashed the same in every process (copydetect's own hashing is Python's salted hash()),
    # then copydetect's winnowing
    grams = [doc[i : i + K_TOKENS].encode() for i in range(len(doc) - K_TOKENS + 1)]
    hashes = np.array([int.from_bytes(hashlib.blake2b(g, digest_size=8).digest(), "big", signed=True) for g in grams])
    selected, _ = winnow(hashes, window_size=WINDOW)
    return {int(h) for h in selected}


def reference_source(name: str) -> str:
    """The source of the library's reference of the learner function ``name``."""
    module, attr = REFERENCE_OF[name].split(":")
    return inspect.getsource(getattr(importlib.import_module(module), attr))


@lru_cache(maxsize=1)
def _references() -> tuple[tuple[str, frozenset[int]], ...]:
    """Every reference body's fingerprints, by its dotted name: those large enough to tell a copy."""
    out = []
    for learner_name, where in REFERENCE_OF.items():
        module, attr = where.split(":")
        name = f"{module}.{attr}"
        for _, body in _bodies(reference_source(learner_name)):
            fp = fingerprints(body)
            if len(fp) >= MIN_FINGERPRINTS and DICTATED.get(name, 0.0) is not None:
                out.append((name, frozenset(fp)))
    return tuple(out)


def shares(source: str) -> list[tuple[str, str, float]]:
    """(answer function, reference, share of the reference's fingerprints in it) for every pair."""
    rows = []
    for name, body in _bodies(source):
        mine = fingerprints(body)
        if not mine:
            continue
        for ref, fp in _references():
            rows.append((name, ref, len(mine & fp) / len(fp)))
    return rows


def library_copies(source: str, threshold: float = THRESHOLD) -> list[str]:
    """Flags for an answer cell whose functions hold most of a shipped reference, whatever their names:
    ``lr_at matches cptlab.model.schedule.lr_multiplier 93%``."""
    best: dict[str, tuple[str, float]] = {}
    for name, ref, share in shares(source):
        if share >= max(threshold, DICTATED.get(ref) or 0.0) and share > best.get(name, ("", 0.0))[1]:
            best[name] = (ref, share)
    return [f"{name} matches {ref} {100 * share:.0f}%" for name, (ref, share) in best.items()]
