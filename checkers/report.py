"""Check results as a learner sees them: what failed, expected vs got, and a hint."""
from __future__ import annotations

import html
from dataclasses import asdict, dataclass, field


@dataclass
class Check:
    id: str
    passed: bool
    expected: str
    got: str
    hint: str = ""
    points: int = 1

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class Report:
    step: int
    title: str
    run_dir: str
    preset: str | None = None
    checks: list[Check] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return bool(self.checks) and all(c.passed for c in self.checks)

    @property
    def points(self) -> float:
        return sum(c.points for c in self.checks if c.passed)

    @property
    def max_points(self) -> float:
        return sum(c.points for c in self.checks)

    @property
    def failures(self) -> list[Check]:
        return [c for c in self.checks if not c.passed]

    def to_dict(self) -> dict:
        return {"step": self.step, "title": self.title, "run_dir": self.run_dir, "preset": self.preset,
                "passed": self.passed, "points": self.points, "max_points": self.max_points,
                "checks": [c.to_dict() for c in self.checks]}

    def headline(self) -> str:
        n_ok = sum(c.passed for c in self.checks)
        verdict = "all checks passed" if self.passed else f"{len(self.failures)} check(s) to fix"
        return f"Step {self.step} - {self.title}: {n_ok}/{len(self.checks)} passed, {verdict}"

    def __str__(self) -> str:
        lines = [self.headline()]
        width = max((len(c.id) for c in self.checks), default=0)
        for c in self.checks:
            mark = "PASS" if c.passed else "FAIL"
            lines.append(f"  {mark}  {c.id:<{width}}  got {c.got}" if c.passed else f"  {mark}  {c.id:<{width}}  expected {c.expected}; got {c.got}")
            if not c.passed and c.hint:
                lines.append(f"        {'':<{width}}  hint: {c.hint}")
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        colour = "#1a7f37" if self.passed else "#cf222e"
        rows = []
        for c in self.checks:
            mark = "&#10004;" if c.passed else "&#10008;"
            col = "#1a7f37" if c.passed else "#cf222e"
            hint = "" if c.passed else html.escape(c.hint)
            rows.append(
                f"<tr><td style='color:{col}'>{mark}</td><td><code>{html.escape(c.id)}</code></td>"
                f"<td>{html.escape(c.expected)}</td><td>{html.escape(c.got)}</td><td>{hint}</td></tr>"
            )
        return (
            f"<div><b style='color:{colour}'>{html.escape(self.headline())}</b>"
            "<table><tr><th></th><th>check</th><th>expected</th><th>got</th><th>hint</th></tr>"
            + "".join(rows) + "</table></div>"
        )

    def __repr__(self) -> str:
        return str(self)
