"""One learner's grade as the gradebook keeps it: points per question, reports, flags, notices."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class LearnerResult:
    learner: str
    seed: int
    preset: str
    status: dict[str, str] = field(default_factory=dict)  # notebook -> what its run did, plainly
    points: dict[str, float] = field(default_factory=dict)  # question -> points
    reports: list[dict] = field(default_factory=list)
    answers: dict[str, str] = field(default_factory=dict)  # W1.. -> text
    code: str = ""  # the learner's answer code cells (for the near-copy flag)
    flags: list[str] = field(default_factory=list)
    notices: list[str] = field(default_factory=list)  # matching notes, functions run on the reference

    @property
    def auto_total(self) -> float:
        return round(sum(self.points.values()), 2)

    @property
    def execution(self) -> str:
        return "; ".join(f"{n[:2]}: {s}" for n, s in self.status.items())


def _results_of(data: dict) -> list[LearnerResult]:
    return [
        LearnerResult(
            d["learner"],
            d["seed"],
            data["preset"],
            d["status"],
            d["points"],
            d["reports"],
            d.get("answers", {}),
            d.get("code", ""),
            d["flags"],
            d.get("notices", []),
        )
        for d in data["learners"]
    ]
