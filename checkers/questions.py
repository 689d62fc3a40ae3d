"""The lab's questions and their points: 100 over the four notebooks.

``code``: a learner's function, checked on fresh random cases against the library's reference.
``results``: the step's results file, every derived number recomputed from its raw sums.
``written``: an answer cell graded by the instructor against ``notebooks/RUBRIC.md`` (0-3).
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Question:
    id: str
    step: int
    title: str
    points: int
    kind: str  # code | results | written


QUESTIONS: dict[str, Question] = {q.id: q for q in [
    Question("1.1", 1, "corpus_perplexity", 14, "code"),
    Question("1.2", 1, "step 1 results", 5, "results"),
    Question("2.1", 2, "pack_documents", 6, "code"),
    Question("2.2", 2, "split_documents", 8, "code"),
    Question("2.3", 2, "to_blocks", 4, "code"),
    Question("2.4", 2, "step 2 results", 4, "results"),
    Question("3.1", 3, "lr_at", 9, "code"),
    Question("3.2", 3, "optimizer_step", 12, "code"),
    Question("3.3", 3, "step 3 results", 6, "results"),
    Question("4.1", 4, "code_ppl_drop and forgetting_ratio", 6, "code"),
    Question("4.2", 4, "choose_variant", 5, "code"),
    Question("4.3", 4, "production_choices", 4, "code"),
    Question("4.4", 4, "step 4 results and the study", 5, "results"),
    Question("W1", 1, "why the step 1 check asserts no direction", 3, "written"),
    Question("W2", 2, "what the EOS changes in the decoded window", 3, "written"),
    Question("W3", 3, "what it means that most steps were clipped", 3, "written"),
    Question("W4", 4, "why LoRA did what it did in this run", 3, "written"),
]}

RESULTS_QUESTION = {q.step: q.id for q in QUESTIONS.values() if q.kind == "results"}
AUTO_POINTS = sum(q.points for q in QUESTIONS.values() if q.kind != "written")
MANUAL_POINTS = sum(q.points for q in QUESTIONS.values() if q.kind == "written")
assert AUTO_POINTS + MANUAL_POINTS == 100
