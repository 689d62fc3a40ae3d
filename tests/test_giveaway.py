"""Hints teach before they tell: no line of a solution body appears in a student notebook, in a
stub's one-line hint or in any check's visible hint (the fix, shown only on request, is exempt)."""

import ast
import re
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]
BEGIN, END = "### BEGIN SOLUTION", "### END SOLUTION"


def _tokens(line: str) -> int:
    """Tokens as a reader counts them: runs of text between spaces (``optimizer.step()`` is one)."""
    return len(line.split())


def normalise(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip()


def solution_lines(src_dir: Path = ROOT / "notebooks" / "src") -> dict[str, set[str]]:
    """Each code solution's lines, whitespace normalised, a ``return`` line's expression alone too (the
    formula); lines of fewer than three tokens are exempt."""
    out: dict[str, set[str]] = {}
    for src in sorted(src_dir.glob("*.py")):
        lines, inside, name = src.read_text().splitlines(), False, ""
        for line in lines:
            if BEGIN in line:
                inside = not line.lstrip().startswith("#  ") and not line.lstrip().startswith("# ###")
                name = line.split(BEGIN, 1)[1].split(":", 1)[0].strip() or src.stem
                continue
            if END in line:
                inside = False
                continue
            if not inside or _tokens(line) < 3 or line.lstrip().startswith("#"):
                continue
            text = normalise(line)
            core = re.sub(r"^return \(?(.*?)\)?$", r"\1", text)
            out.setdefault(name, set()).update({text} | ({core} if _tokens(core) >= 3 else set()))
    return out


def visible_hints(folder: Path = ROOT / "checkers" / "code") -> list[str]:
    """Every string a check can show as a hint or a row (string constants and f-strings' fixed parts),
    but the ``fix=`` a learner asks for."""
    found = []
    for path in sorted(folder.glob("*.py")):
        tree = ast.parse(path.read_text())
        hidden = {
            id(n)
            for call in ast.walk(tree)
            if isinstance(call, ast.Call)
            for kw in call.keywords
            if kw.arg == "fix"
            for n in ast.walk(kw.value)
        }
        for node in ast.walk(tree):
            if id(node) in hidden:
                continue
            if isinstance(node, ast.JoinedStr):
                found.append("".join(v.value if isinstance(v, ast.Constant) else "{}" for v in node.values))
            elif isinstance(node, ast.Constant) and isinstance(node.value, str):
                found.append(node.value)
    return [normalise(s) for s in found]


def given_away(texts: list[str], solutions: dict[str, set[str]]) -> list[str]:
    return sorted(
        f"{name}: {line!r} in {text[:80]!r}"
        for text in texts
        for name, lines in solutions.items()
        for line in lines
        if line in text
    )


def student_texts() -> list[str]:
    out = []
    for nb in sorted((ROOT / "notebooks").glob("*.ipynb")):
        out += [normalise(c.source) for c in nbformat.read(nb, as_version=4).cells]
        out += [normalise(line) for c in nbformat.read(nb, as_version=4).cells for line in c.source.splitlines()]
    return out


def test_no_solution_line_appears_in_a_student_notebook_or_a_visible_hint():
    solutions = solution_lines()
    assert sum(len(v) for v in solutions.values()) > 50, "the solution bodies were not found"
    assert given_away(student_texts(), solutions) == []
    assert given_away(visible_hints(), solutions) == []


def test_the_give_away_test_fails_a_stub_hint_that_holds_its_formula(tmp_path):
    src = (ROOT / "notebooks" / "src" / "03_cpt.py").read_text()
    leaky = re.sub(
        r"### BEGIN SOLUTION mfu: .*",
        "### BEGIN SOLUTION mfu: tokens_per_second * flops_per_token / peak_flops[precision]",
        src,
    )
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "03_cpt.py").write_text(leaky)
    import sys

    sys.path.insert(0, str(ROOT / "notebooks"))
    try:
        from build import build
    finally:
        sys.path.remove(str(ROOT / "notebooks"))
    student = build(tmp_path / "src" / "03_cpt.py")["student"]
    texts = [normalise(c.source) for c in student.cells]
    assert any("mfu" in hit for hit in given_away(texts, solution_lines()))
    fixed_in_a_hint = ["set the steps right: for step in range(run.first_step, cfg.max_steps + 1): ..."]
    assert given_away([normalise(fixed_in_a_hint[0])], solution_lines())


@pytest.mark.parametrize("hint", ["1 - adapted / baseline", "write this part"])
def test_a_short_paraphrase_is_not_a_line(hint):
    assert given_away([hint], {"x": {"return 1.0 - adapted_code_ppl / baseline_code_ppl"}}) == []
