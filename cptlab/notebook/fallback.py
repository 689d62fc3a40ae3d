"""Which of the learner's functions the lab's run uses, and which it replaces with the lab's own.

One mistake costs its own points: a learner function that did not pass its check (or is still a
stub) is replaced by the lab's reference for the run, so the steps after it count on their own.
The check records its verdict here (``record``); the grader, which runs the checks in its own
process, names the functions to replace in ``CPTLAB_USE_REFERENCE`` (comma-separated) instead.
"""

from __future__ import annotations

import ast
import inspect
import os
import textwrap

ENV = "CPTLAB_USE_REFERENCE"
# A function whose failure also breaks another: the learner's split_documents calls their pack_documents.
DEPENDS = {"split_documents": ("pack_documents",)}

_verdicts: dict[str, str] = {}  # function -> passed | failed | not written


def record(names, passed: bool, written: bool = True) -> None:
    """A check's verdict on the learner's functions ``names`` (the last check run counts)."""
    for name in names:
        _verdicts[name] = "passed" if passed else "failed" if written else "not written"


def named_by_grader() -> set[str]:
    return {n.strip() for n in os.environ.get(ENV, "").split(",") if n.strip()}


def replaced(name: str) -> bool:
    names = (name, *DEPENDS.get(name, ()))
    return any(n in named_by_grader() or _verdicts.get(n) in ("failed", "not written") for n in names)


def none_written(names) -> bool:
    """True when every one of ``names`` is known to be a stub: a step run on none of the learner's code."""
    return bool(names) and all(_verdicts.get(n) == "not written" for n in names)


def is_stub(fn) -> bool:
    """Whether ``fn`` is still the handed-out stub: its body (after the docstring) one ``raise
    NotImplementedError``. Read from its source, so nothing of it runs."""
    try:
        tree = ast.parse(textwrap.dedent(inspect.getsource(fn)))
    except (OSError, TypeError, SyntaxError):
        return False
    if not tree.body or not isinstance(tree.body[0], (ast.FunctionDef, ast.AsyncFunctionDef)):
        return False
    body = tree.body[0].body
    if body and isinstance(body[0], ast.Expr) and isinstance(getattr(body[0], "value", None), ast.Constant):
        body = body[1:]  # the docstring
    if len(body) != 1 or not isinstance(body[0], ast.Raise) or body[0].exc is None:
        return False
    exc = body[0].exc.func if isinstance(body[0].exc, ast.Call) else body[0].exc
    return isinstance(exc, ast.Name) and exc.id == "NotImplementedError"


def use(fn, name: str):
    """``fn``, or None (the lab's reference) when ``name`` failed its check or is a stub whose check
    did not run (a Go further part in a core-track run); says so in one line."""
    if fn is not None and name not in _verdicts and is_stub(fn):
        _verdicts[name] = "not written"
    if fn is None or not replaced(name):
        return fn
    if _verdicts.get(name) == "not written":
        print(
            f"[reference] `{name}` is not written yet; this run goes on with the lab's reference so the next steps can "
            f"run (a go-further part may stay so; a core one earns its step's points once written)"
        )
    else:
        print(
            f"[reference] your `{name}` did not pass its check; this run goes on with the lab's reference so the next "
            f"steps count on their own (fix it, run its check cell, then this cell again to use yours)"
        )
    return None
