"""Check results as a learner sees them: what failed, expected vs got, and a hint. ``Report`` is
the one collector of checks: of learner code, of results files and of a verification.

A hint names the mistake and the idea behind it; a failed row may also hold the fix as code, shown
only on request: a collapsed "Show the fix" under the row in Jupyter, ``check_x(fn, reveal=True)``
in a terminal."""

from __future__ import annotations

import html
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

MIME = "application/vnd.cptlab.report+json"


@dataclass
class Check:
    id: str
    passed: bool
    expected: str
    got: str
    hint: str = ""
    points: float = 1.0
    fix: str = ""  # the fix as code: shown only on request

    def to_dict(self) -> dict:
        return asdict(self)


def show(value: Any) -> str:
    """A found value as a check row shows it: floats to six significant digits."""
    return f"{value:.6g}" if isinstance(value, float) else str(value)


def plainly(exc: Exception) -> tuple[str, str | None]:
    """What a check whose body raised shows: the error in one line, the check's own hint kept."""
    text = str(exc).splitlines()[0] if str(exc) else ""
    return f"{type(exc).__name__}: {text}"[:300], None


@dataclass
class Report:
    step: int
    title: str
    run_dir: str
    preset: str | None = None
    checks: list[Check] = field(default_factory=list)
    question: str | None = None  # "1.1", ...: the question whose points this report carries
    status: str = ""  # "not implemented yet" when the learner's function is still a stub
    seed: int | None = None  # the check's random cases: check_x(fn, seed=...) replays them
    # how a check whose body raised reads: exception -> (got, hint or None to keep the check's own)
    explain: Callable[[Exception], tuple[str, str | None]] = field(default=plainly, repr=False, compare=False)
    reveal: bool = field(default=False, compare=False)  # the text shows each failed row's fix

    def add(
        self, cid: str, passed: bool, expected: str, got: Any, hint: str = "", points: float = 1.0, fix: str = ""
    ) -> bool:
        self.checks.append(Check(cid, bool(passed), expected, show(got), hint, points, "" if passed else fix))
        return bool(passed)

    def check(self, cid: str, expected: str, body: Callable[[], tuple[bool, Any]], hint: str = "") -> bool:
        """Run ``body`` -> (passed, what was found). A body that raises (a value missing, a file
        refused, a model that will not load) fails this check only, as ``explain`` says."""
        try:
            ok, got = body()
        except Exception as exc:  # noqa: BLE001 - one broken value fails its check, never the grader
            ok, (got, why) = False, self.explain(exc)
            hint = why or hint
        return self.add(cid, ok, expected, got, hint)

    @property
    def passed(self) -> bool:
        return bool(self.checks) and all(c.passed for c in self.checks)

    @property
    def points(self) -> float:
        return round(sum(c.points for c in self.checks if c.passed), 2)

    @property
    def max_points(self) -> float:
        return round(sum(c.points for c in self.checks), 2)

    def share_points(self, total: float, weights: dict[str, float] | None = None) -> "Report":
        """Share a question's points over its checks in proportion to ``weights`` (by check id; 1 if absent)."""
        w = [(weights or {}).get(c.id, 1.0) for c in self.checks]
        for c, wc in zip(self.checks, w):
            c.points = total * wc / sum(w)
        return self

    @property
    def failures(self) -> list[Check]:
        return [c for c in self.checks if not c.passed]

    def to_dict(self) -> dict:
        return {
            "step": self.step,
            "title": self.title,
            "run_dir": self.run_dir,
            "preset": self.preset,
            "question": self.question,
            "status": self.status,
            "seed": self.seed,
            "passed": self.passed,
            "points": self.points,
            "max_points": self.max_points,
            "checks": [c.to_dict() for c in self.checks],
        }

    def headline(self) -> str:
        n_ok = sum(c.passed for c in self.checks)
        where = f"Question {self.question}" if self.question else f"Step {self.step}"
        if self.status:
            verdict = self.status
        else:
            verdict = "all checks passed" if self.passed else f"{len(self.failures)} check(s) to fix"
        seed = f"; cases drawn with seed={self.seed}" if self.seed is not None else ""
        return (
            f"{where} - {self.title}: {n_ok}/{len(self.checks)} passed, {verdict} "
            f"({self.points:g}/{self.max_points:g} points{seed})"
        )

    def _repr_mimebundle_(self, include=None, exclude=None) -> dict:
        """HTML for the learner, text for a terminal, and the report as JSON for the graders
        that read executed notebooks."""
        return {"text/html": self._repr_html_(), "text/plain": str(self), MIME: self.to_dict()}

    def __str__(self) -> str:
        lines = [self.headline()]
        width = max((len(c.id) for c in self.checks), default=0)
        for c in self.checks:
            mark = "PASS" if c.passed else "FAIL"
            lines.append(
                f"  {mark}  {c.id:<{width}}  got {c.got}"
                if c.passed
                else f"  {mark}  {c.id:<{width}}  expected {c.expected}; got {c.got}"
            )
            if not c.passed and c.hint:
                lines.append(f"        {'':<{width}}  hint: {c.hint}")
            if not c.passed and c.fix:
                shown = c.fix if self.reveal else "hidden: call the check again with reveal=True to see it"
                lines.append(f"        {'':<{width}}  fix: {shown}")
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        colour = "#1a7f37" if self.passed else "#9a6700" if self.status else "#cf222e"
        rows = []
        for c in self.checks:
            mark = "&#10004;" if c.passed else "&#10008;"
            col = "#1a7f37" if c.passed else "#cf222e"
            hint = "" if c.passed else html.escape(c.hint)
            if not c.passed and c.fix:
                fix = html.escape(c.fix)
                hint += f"<details><summary>Show the fix</summary><pre><code>{fix}</code></pre></details>"
            rows.append(
                f"<tr><td style='color:{col}'>{mark}</td><td><code>{html.escape(c.id)}</code></td>"
                f"<td>{html.escape(c.expected)}</td><td>{html.escape(c.got)}</td><td>{hint}</td></tr>"
            )
        return (
            f"<div><b style='color:{colour}'>{html.escape(self.headline())}</b>"
            "<table><tr><th></th><th>check</th><th>expected</th><th>got</th><th>hint</th></tr>"
            + "".join(rows)
            + "</table></div>"
        )

    def __repr__(self) -> str:
        return str(self)
