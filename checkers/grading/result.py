"""One learner's grade as the gradebook keeps it: points per question, reports, flags, notices;
as plain JSON, in the gradebook and in the file each learner gets once graded (a stopped class
resumes from those files)."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

from checkers.core.questions import GRADED_TRACKS, QUESTIONS
from cptlab.core.results import write_json_atomic


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
    track: str = "core"  # what was graded: the core, or the core and Go further (full)

    @property
    def auto_total(self) -> float:
        return round(sum(self.points.values()), 2)

    @property
    def graded_tracks(self) -> tuple[str, ...]:
        """The question tracks this grade covers (core, or core and go-further)."""
        return GRADED_TRACKS.get(self.track, GRADED_TRACKS["full"])

    def auto(self, track: str) -> float:
        """The automatic points earned in one track (core or go-further)."""
        return round(sum(p for q, p in self.points.items() if QUESTIONS[q].track == track), 2)

    @property
    def execution(self) -> str:
        return "; ".join(f"{n[:2]}: {s}" for n, s in self.status.items())


def as_dict(r: LearnerResult) -> dict:
    return {
        "learner": r.learner,
        "seed": r.seed,
        "status": r.status,
        "points": r.points,
        "flags": r.flags,
        "reports": r.reports,
        "notices": r.notices,
        "answers": r.answers,
        "code": r.code,
        "track": r.track,
    }


def from_dict(d: dict, preset: str) -> LearnerResult:
    return LearnerResult(
        d["learner"],
        d["seed"],
        preset,
        d["status"],
        d["points"],
        d["reports"],
        d.get("answers", {}),
        d.get("code", ""),
        d["flags"],
        d.get("notices", []),
        d.get("track", "full"),
    )


def _results_of(data: dict) -> list[LearnerResult]:
    return [from_dict(d, data["preset"]) for d in data["learners"]]


def submission_digest(folder: Path) -> str:
    """What a learner handed in, hashed: a result is reused only for the very submission it graded."""
    h = hashlib.sha256()
    for f in sorted(p for p in Path(folder).rglob("*") if p.is_file() and not p.is_symlink()):
        h.update(str(f.relative_to(folder)).encode() + b"\0" + f.read_bytes() + b"\0")
    return h.hexdigest()


def save_result(path: Path, r: LearnerResult, key: dict) -> None:
    """One graded learner, written atomically as soon as it is graded, with what it was graded for."""
    write_json_atomic(path, {"key": key, "preset": r.preset, "learner": as_dict(r)})


def load_result(path: Path, key: dict) -> LearnerResult | None:
    """A learner graded by an earlier (perhaps stopped) run for the same submission, preset and grader
    settings; None when there is none or it no longer matches (then the learner is graded again)."""
    try:
        data = json.loads(Path(path).read_text())
        return from_dict(data["learner"], data["preset"]) if data.get("key") == key else None
    except (OSError, ValueError, KeyError, TypeError):
        return None
