"""Copies of the shipped library caught: a pasted reference body is flagged with the reference's
name under another signature, renamed variables or an inlined constant; honest answers (the
solutions, independent right answers) are not; classmates are flagged only where a pair stands out
of the class's own similarity."""

import ast
import inspect

import nbformat
import pytest

from checkers.grading.flags import defined_names, flag_copies, stands_out
from checkers.grading.library_copies import REFERENCE_OF, THRESHOLD, library_copies, reference_source, shares
from checkers.grading.result import LearnerResult
from cptlab.core.results import STEP_NOTEBOOKS
from cptlab.notebook.execute import SOLUTION_DIR

# learner 1: the bodies of the schedule, the packing and the interpolation pasted under the notebook's
# signatures (the schedule scaled by the peak, the dtype argument turned into a local)
PASTED_BODIES = """
import math
import numpy as np
import torch

def lr_at(step, peak_lr, warmup_steps, max_steps):
    min_lr_ratio = 0.0
    if step < warmup_steps:
        return peak_lr * (step / max(1, warmup_steps))
    progress = (step - warmup_steps) / max(1, max_steps - warmup_steps)
    cosine = max(0.0, 0.5 * (1.0 + math.cos(math.pi * progress)))
    return peak_lr * (min_lr_ratio + (1.0 - min_lr_ratio) * cosine)


def pack_documents(docs, eos):
    dtype = np.int64
    if not docs:
        return np.zeros(0, dtype=dtype)
    eos_arr = np.array([eos], dtype=np.int64)
    return np.concatenate([part for ids in docs for part in (ids, eos_arr)]).astype(dtype)


def interpolate(base_state, cpt_state, alpha):
    with torch.no_grad():
        return {
            k: (1.0 - alpha) * base_state[k] + alpha * cpt_state[k]
            if base_state[k].is_floating_point()
            else base_state[k].clone()
            for k in base_state
        }
"""
# learner 2: the schedule with every name changed and its floor inlined
RENAMED_INLINED = """
import math

def lr_at(s, top, w, total):
    if s < w:
        return top * s / max(1, w)
    frac = (s - w) / max(1, total - w)
    c = max(0.0, 0.5 * (1.0 + math.cos(math.pi * frac)))
    return top * (0.0 + (1.0 - 0.0) * c)
"""
# independent right answers, written as learners would (not from the library)
INDEPENDENT = [
    """
import math

def lr_at(step, peak_lr, warmup_steps, max_steps):
    if step <= warmup_steps:
        return peak_lr * step / warmup_steps
    t = (step - warmup_steps) / (max_steps - warmup_steps)
    return 0.5 * peak_lr * (1 + math.cos(math.pi * t))
""",
    """
import numpy as np

def pack_documents(doc_ids, eos_id):
    out = []
    for doc in doc_ids:
        out.extend(int(t) for t in doc)
        out.append(eos_id)
    return np.array(out, dtype=np.int64)
""",
    """
def interpolate(base_state, cpt_state, alpha):
    merged = {}
    for key in base_state:
        a, b = base_state[key], cpt_state[key]
        merged[key] = a + alpha * (b - a) if a.dtype.is_floating_point else a.clone()
    return merged
""",
]


def _solution_cells():
    for name in STEP_NOTEBOOKS.values():
        for cell in nbformat.read(SOLUTION_DIR / name, as_version=4).cells:
            if cell.cell_type == "code" and "solution" in cell.metadata.get("tags", []):
                yield cell.source


def _right_answers_of_the_tests():
    import test_exercises

    for name in dir(test_exercises):
        fn = getattr(test_exercises, name)
        if name.endswith("_ok") and inspect.isfunction(fn):
            yield inspect.getsource(fn)


def test_every_learner_function_has_a_reference_that_exists():
    written = {fn for src in _solution_cells() for fn in defined_names(src)}
    assert written <= set(REFERENCE_OF), written - set(REFERENCE_OF)
    for fn in REFERENCE_OF:
        assert ast.parse(reference_source(fn)).body, fn


def test_pasted_bodies_under_other_signatures_are_flagged_with_the_references_name():
    flags = library_copies(PASTED_BODIES)
    named = {f.split(" matches ")[0]: f.split(" matches ")[1].rsplit(" ", 1)[0] for f in flags}
    assert named == {
        "lr_at": "cptlab.model.schedule.lr_multiplier",
        "pack_documents": "cptlab.data.corpus.pack",
        "interpolate": "cptlab.lab.study.interpolate",
    }, flags
    assert all(int(f.rsplit(" ", 1)[1].rstrip("%")) >= 100 * THRESHOLD for f in flags)


def test_a_renamed_copy_with_its_constant_inlined_is_flagged():
    assert [f.rsplit(" ", 1)[0] for f in library_copies(RENAMED_INLINED)] == [
        "lr_at matches cptlab.model.schedule.lr_multiplier"
    ]


@pytest.mark.parametrize("source", INDEPENDENT)
def test_independent_right_answers_are_not_flagged(source):
    assert library_copies(source) == []


def test_the_solutions_and_the_tests_right_answers_are_not_flagged_and_sit_well_under_the_threshold():
    honest = [*_solution_cells(), *_right_answers_of_the_tests(), *INDEPENDENT]
    assert len(honest) > 20
    assert [f for src in honest for f in library_copies(src)] == []
    top = max(s for src in honest for _, ref, s in shares(src) if not ref.endswith(".cpt_loop"))
    assert top <= THRESHOLD - 0.05, top  # the calibration the threshold rests on


def test_a_renamed_function_is_compared_with_every_reference():
    """Its name says nothing: the packing reference pasted as `helper` is still found."""
    body = reference_source("pack_documents").replace("def pack(", "def helper(", 1)
    assert library_copies(body) == ["helper matches cptlab.data.corpus.pack 100%"]


def test_a_reference_any_right_answer_repeats_is_not_flagged():
    """to_blocks is two lines, the FLOPs formula the notebook gives term by term."""
    assert library_copies(reference_source("to_blocks")) == []
    assert library_copies(reference_source("flops_per_token")) == []


def test_classmates_are_flagged_only_where_a_pair_stands_out_of_the_class():
    def learner(name, code):
        return LearnerResult(name, 1, "smoke", code=code)

    base = "\n\n".join(_solution_cells())
    # a class of near-identical learners (each the solutions with one line added): similar everywhere
    same = [
        learner(f"l{i}", base + f"\n\ndef extra_{i}(x):\n    return x * {i} + {i * i} - {i} // 3\n") for i in range(6)
    ]
    flag_copies(same)
    assert all(not r.flags for r in same), [r.flags for r in same]
    # independent learners and one copied pair: only the pair
    own = [learner(f"own{i}", src) for i, src in enumerate(INDEPENDENT + [RENAMED_INLINED, PASTED_BODIES])]
    pair = [learner("a", base), learner("b", base)]
    flag_copies(own + pair)
    assert pair[0].flags == ["code 100% similar to b"] and pair[1].flags == ["code 100% similar to a"]
    assert all(not r.flags for r in own), [r.flags for r in own]
    assert stands_out([0.2] * 10) == 0.8 and stands_out([0.95] * 10 + [0.9] * 10) > 0.95
