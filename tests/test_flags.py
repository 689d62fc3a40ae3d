"""The reference-copy flag: an answer holding a pasted library reference is named with it; the
solutions, written as a learner would, are never flagged."""

import ast

import nbformat
import pytest

from checkers.grading.flags import REFERENCE_OF, defined_names, reference_copies, reference_source
from cptlab.core.results import STEP_NOTEBOOKS
from cptlab.notebook.execute import SOLUTION_DIR


def _solution_cells():
    for name in STEP_NOTEBOOKS.values():
        for cell in nbformat.read(SOLUTION_DIR / name, as_version=4).cells:
            if cell.cell_type == "code" and "solution" in cell.metadata.get("tags", []):
                yield cell.source


def test_every_learner_function_has_a_reference_that_exists():
    written = {fn for src in _solution_cells() for fn in defined_names(src)}
    assert written <= set(REFERENCE_OF), written - set(REFERENCE_OF)
    for fn in REFERENCE_OF:
        assert ast.parse(reference_source(fn)).body, fn


def test_the_solutions_are_not_flagged():
    assert [f for src in _solution_cells() for f in reference_copies(src)] == []


def test_a_reference_any_right_answer_repeats_is_not_flagged():
    """to_blocks is two lines: a learner who writes them has copied nothing."""
    src = (
        "def to_blocks(stream, block_size):\n"
        "    n = len(stream) // block_size * block_size\n"
        "    return stream[:n].reshape(-1, block_size)\n"
    )
    assert reference_copies(src) == [] and reference_copies(reference_source("to_blocks")) == []


def _without_annotations(src: str) -> str:
    tree = ast.parse(src)
    fn = tree.body[0]
    fn.returns = None
    for a in fn.args.args:
        a.annotation = None
    return ast.unparse(tree)


@pytest.mark.parametrize(
    "fn, wrapper",
    [
        (
            "lr_at",
            "def lr_at(step, peak_lr, warmup_steps, max_steps):\n"
            "    return peak_lr * lr_multiplier(step, warmup_steps, max_steps)\n",
        ),
        ("pack_documents", "def pack_documents(doc_ids, eos_id):\n    return pack(doc_ids, eos_id).astype('int64')\n"),
        ("interpolate", ""),
    ],
)
def test_a_pasted_reference_is_named(fn, wrapper):
    """Pasted whole beside a wrapper, or renamed into the learner's function, annotations dropped."""
    ref = _without_annotations(reference_source(fn))
    if not wrapper:
        ref = ref.replace(f"def {REFERENCE_OF[fn].split(':')[1]}(", f"def {fn}(", 1)
    module, attr = REFERENCE_OF[fn].split(":")
    flags = reference_copies(ref + "\n\n" + wrapper)
    assert flags == [f"{fn}: 100% of the library's reference {module}.{attr}"], flags
