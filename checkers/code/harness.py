"""The harness every check of learner code runs in: one question's report (``Exercise``), its
limits, the learner's exceptions, and the comparisons and random models the checks share.

A stub that still raises ``NotImplementedError`` gets a report that says "not implemented yet" (0
points), never a traceback.
"""

from __future__ import annotations

import math
import secrets
import traceback
from typing import Any, Callable

import numpy as np
import torch

from checkers.core.questions import CHECK_GATES, CHECK_POINTS, MAIN_RESULT, MAIN_SHARE, QUESTIONS
from checkers.core.report import Check, Report
from cptlab.model.loop import small_gpt2
from cptlab.notebook.fallback import record

NOT_YET = "not implemented yet"


class _NotYet(Exception):
    pass


class _Raised(Exception):
    pass


class _Limit(Exception):
    pass


class LearnerRaised(Exception):
    """The learner's function raised in another process; the message says what and where."""


class OutOfLimits(Exception):
    """The learner's function ran past its question's time limit or memory cap."""


class Exercise:
    """One question's report: rows of checks, each with its points from ``CHECK_POINTS``."""

    def __init__(self, qid: str, fn: Callable, seed: int | None = None):
        q = QUESTIONS[qid]
        self.q, self.fn = q, fn
        self.name = getattr(fn, "__name__", q.title)
        # a fresh case every call (no answer can be hard-coded), recorded so a failure can be replayed
        self.seed = secrets.randbits(31) if seed is None else int(seed)
        self.report = Report(q.step, q.title, "", question=q.id, seed=self.seed)
        self.rng = np.random.default_rng(self.seed)
        self.grad_on: list[bool] = []  # grad mode of each forward pass of the model the function was given

    def call(self, *args, fn: Callable | None = None) -> Any:
        f = fn or self.fn
        try:
            out = f(*args)
        except NotImplementedError:
            raise _NotYet() from None
        except OutOfLimits as exc:
            raise _Limit(str(exc)) from None
        except LearnerRaised as exc:
            raise _Raised(str(exc)) from None
        except Exception as exc:  # the learner's bug: shown as a failed check, with where it happened
            frames = traceback.extract_tb(exc.__traceback__)
            own = getattr(getattr(f, "__code__", None), "co_filename", None)
            where = next((f"line {fr.lineno}: {fr.line}" for fr in reversed(frames) if fr.filename == own), "")
            raise _Raised(f"{type(exc).__name__}: {exc}" + (f" (at {where})" if where else "")) from None
        self.grad_on.extend(getattr(f, "last_grad_on", ()))
        return out

    def row(self, cid: str, ok: bool, expected: str, got: str, hint: str = "", fix: str = "") -> bool:
        """One check: ``hint`` names the mistake and its idea; ``fix``, the code, is shown on request only."""
        return self.report.add(
            f"q{self.q.id}.{cid}", ok, expected, got, "" if ok else hint, CHECK_POINTS[self.q.id][cid], fix
        )

    def run(self, body: Callable[[], None]) -> Report:
        rest = "the checks after this one were not reached"
        try:
            body()
        except _NotYet:
            self.report.checks = [
                Check(
                    f"q{self.q.id}",
                    False,
                    f"{self.name} written and passing its checks",
                    NOT_YET,
                    f"write {self.name} in the cell above (replace the `raise NotImplementedError`), run that cell, "
                    "then this one",
                    points=self.q.points,
                )
            ]
            self.report.status = NOT_YET
        except _Raised as exc:
            self._rest(
                f"q{self.q.id}.runs",
                f"{self.name} returns without an error",
                str(exc),
                "read the error above, fix that line, run the function's cell again, then this one",
            )
        except _Limit as exc:
            self._rest(
                f"q{self.q.id}.limits",
                f"{self.name} returns within its question's limits",
                f"{self.name}: {exc}",
                f"{self.name} ran too long or used too much memory: look for a loop that never ends or a tensor that "
                "grows",
            )
            self.report.status = f"{self.name}: {exc}"
        else:
            self._rest(
                f"q{self.q.id}.not_reached",
                "every check of this question",
                rest,
                "fix the failed check above: the checks after it need its result",
            )
        gates = [
            c for c in self.report.checks if c.id.rsplit(".", 1)[-1] in CHECK_GATES.get(self.q.id, ()) and not c.passed
        ]
        if gates:
            for c in self.report.checks:
                c.points = 0.0
            gates[0].points = float(self.q.points)
        else:
            self._cap_without_main_result()
        if not getattr(self.fn, "remote", False):
            record(self.q.functions, self.report.passed, written=self.report.status != NOT_YET)
        return self.report

    def _cap_without_main_result(self) -> None:
        """A failed main result (``MAIN_RESULT``) leaves at most ``MAIN_SHARE`` of the question's points."""
        main = MAIN_RESULT.get(self.q.id, set())
        failed = [c for c in self.report.checks if c.id.rsplit(".", 1)[-1] in main and not c.passed]
        passed = [c for c in self.report.checks if c.passed]
        earned, cap = sum(c.points for c in passed), self.q.points * MAIN_SHARE
        if not failed or earned <= cap:
            return
        for c in passed:
            c.points = round(c.points * cap / earned, 4)
        failed[0].points = round(self.q.points - sum(c.points for c in self.report.checks if c is not failed[0]), 4)

    def _rest(self, cid: str, expected: str, got: str, hint: str) -> None:
        """The points of the checks not reached go to one failing row, so the question's total stays whole."""
        left = round(self.q.points - sum(c.points for c in self.report.checks), 6)
        if left > 1e-9 or not cid.endswith("not_reached"):
            self.report.add(cid, False, expected, got, hint, max(0.0, left))


def _close(a: float, b: float, rel: float = 1e-4) -> bool:
    return math.isfinite(a) and math.isfinite(b) and abs(a - b) <= rel * max(abs(a), abs(b), 1e-12)


def _numbers(out: Any, n: int) -> list[float] | None:
    try:
        vals = [
            float(torch.as_tensor(v).detach().float().item()) if isinstance(v, torch.Tensor) else float(v) for v in out
        ]
    except (TypeError, ValueError, RuntimeError):
        return None
    return vals if len(vals) == n else None


def tiny_gpt2(seed: int, vocab: int = 97, n_positions: int = 64, sharp: float = 1.0):
    """``small_gpt2`` with no dropout; ``sharp`` scales the embeddings so that per-token losses
    spread widely (windows then differ, and the typical mistakes show)."""
    model = small_gpt2(seed, vocab, n_positions)
    with torch.no_grad():
        model.transformer.wte.weight.mul_(sharp)
    return model.eval()


def _as_array(x: Any) -> np.ndarray | None:
    try:
        a = np.asarray(x.detach().cpu() if isinstance(x, torch.Tensor) else x)
    except (TypeError, ValueError):
        return None
    return a if a.dtype != object else None


def _close_lists(a: Any, b: Any, rel: float = 1e-9) -> bool:
    """Nested lists of numbers equal within ``rel`` (same shape)."""
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_close_lists(x, y, rel) for x, y in zip(a, b))
    if isinstance(a, bool) or isinstance(b, bool):
        return a == b
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return abs(a - b) <= rel * max(abs(a), abs(b), 1e-12)
    return False


def _num_close(got: Any, want: float) -> bool:
    return isinstance(got, (int, float, np.floating)) and not isinstance(got, bool) and _close(float(got), want, 1e-9)
