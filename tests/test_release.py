"""`make release`: what learners receive holds no solution body, no model answer and no rubric key,
and its four notebooks run from it to their end (tests/test_notebooks.py runs them from a release)."""

import re
from pathlib import Path

from checkers.core.questions import QUESTIONS
from checkers.grading.release import release

REPO = Path(__file__).resolve().parent.parent
BEGIN, END = "### BEGIN SOLUTION", "### END SOLUTION"


def solution_bodies() -> list[tuple[str, bool]]:
    """Each solution region of the notebook sources, as its lines without indentation or markdown '# ',
    and whether it is a written answer (a markdown cell)."""
    bodies = []
    for src in sorted((REPO / "notebooks" / "src").glob("*.py")):
        lines, inside = src.read_text().splitlines(), None
        for line in lines:
            if BEGIN in line:
                inside = []
            elif END in line:
                body = [re.sub(r"^#\s?", "", ln.strip()).strip() for ln in inside]
                written = all(ln.strip().startswith("#") for ln in inside if ln.strip())
                bodies.append(("\n".join(ln for ln in body if ln), written))
                inside = None
            elif inside is not None:
                inside.append(line)
    return bodies


def _normal(text: str) -> str:
    return "\n".join(ln.strip() for ln in text.splitlines() if ln.strip())


def test_the_release_holds_no_solution_no_model_answer_and_no_rubric(tmp_path):
    out = release(tmp_path / "release")
    files = [p for p in out.rglob("*") if p.is_file()]
    names = {str(p.relative_to(out)) for p in files}
    assert {
        "notebooks/01_baseline.ipynb",
        "notebooks/04_tradeoff.ipynb",
        "cptlab/lab/steps.py",
        "checkers/code/exercises.py",
        "README.md",
        "Makefile",
        "pyproject.toml",
    } <= names
    assert not [
        n for n in names if "solutions" in n or n.startswith("notebooks/src") or "RUBRIC" in n or n.startswith("tests")
    ]
    texts = {}
    for p in files:
        try:
            texts[p] = p.read_text()
        except UnicodeDecodeError:
            continue
    import json

    for p in list(texts):  # notebooks: their cells' text as written, not JSON-escaped
        if p.suffix == ".ipynb":
            texts[p] = "\n".join(
                c["source"] if isinstance(c["source"], str) else "".join(c["source"])
                for c in json.loads(texts[p])["cells"]
            )
    bodies = solution_bodies()
    assert len(bodies) >= 14
    corpus = {p: _normal(t) for p, t in texts.items()}
    assert sum(w for _, w in bodies) == sum(q.kind == "written" for q in QUESTIONS.values())
    for body, written in bodies:
        if not written and "\n" not in body:
            continue  # a one-line formula (1 - adapted / baseline) is the library's definition too: the lab runs on it
        for p, text in corpus.items():
            assert body not in text, f"a solution body is in {p.relative_to(out)}: {body[:80]!r}"
        for line in body.splitlines() if written else ():  # a model answer's lines, one by one
            if len(line) > 40:
                assert not any(line in text for text in corpus.values()), line
    assert "For an instructor" not in texts[out / "README.md"] and "grade-class" not in texts[out / "README.md"]
