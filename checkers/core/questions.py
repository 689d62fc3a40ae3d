"""The lab's questions and their points, by track: the core's 100 (what the lab promises) and
*Go further*'s own points (the optional sections, cells tagged ``go-further``).

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
    functions: tuple[str, ...] = ()  # the learner's functions a code question checks
    # whether the step's run (and so its results file) is made with them; flops_per_token only reads
    # it, production_choices decides from its study
    runs_the_step: bool = True
    track: str = "core"  # core | go-further

    @property
    def weight(self) -> float:
        """A written answer's points per rubric level (the rubric scores 0-3)."""
        return self.points / RUBRIC_MAX


# Points per check of each code question (otter's points per test case): the final answer of each
# function carries most of them; a check not in this table is an error, so adding one never
# silently re-weights the others.
CHECK_POINTS: dict[str, dict[str, float]] = {
    "1.1": {"returns": 2, "no_grad": 2, "tokens": 4, "nll_sum": 2, "ppl": 8},
    "2.1": {"stream": 2, "eos_after_each": 8},
    "2.2": {"returns": 1, "whole_documents": 2, "fraction": 1, "at_the_fraction": 1, "seeded_rule": 2},
    "2.3": {"shape": 1, "values": 2, "exact_multiple": 1},
    "3.1": {"returns": 2, "warmup": 2, "cosine": 4, "end": 2},
    "3.2": {"returns": 2, "loss": 2, "grad_norm": 4, "moved": 0, "update": 4, "zero_grad": 4},
    "3.3": {"steps": 1, "batches": 0.5, "rate": 1, "log": 0.5, "modes": 1, "curve": 1, "floor": 0.5, "resume": 0.5},
    "3.4": {"returns": 0.5, "small_model": 1, "long_block": 1.5, "mfu": 1},
    "4.1": {"code_ppl_drop": 1, "forgetting_ratio": 1},
    "4.2": {"returns": 1, "total": 1.5, "spread": 1.5},
    "4.3": {"returns": 0.5, "endpoints": 1, "blend": 1.5, "inputs_unchanged": 0.5, "integer_buffers": 0.5},
    "4.4": {"returns": 0.5, "targets": 1.5, "fan_in_fan_out": 1, "rank_alpha": 0.5, "base_frozen": 0.5},
    "4.5": {"some_under_the_floor": 3, "at_the_floor": 2, "none_under_the_floor": 3},
    "4.6": {  # two random studies carry the points; the learner's own study is shown
        "returns.a": 0,
        "returns.b": 0,
        "returns.own": 0,
        "own_study": 0,
        **{
            f"{k}.{w}": 0.5 if w != "own" else 0
            for k in ("code_only_assistant", "english_within_floor", "per_customer_adapters", "no_training_budget")
            for w in ("a", "b", "own")
        },
    },
}

# A results question's checks by weight: its points are shared in proportion (a check of a file from
# an older version, or one the run has no use for, is absent and the rest share its part). The
# headline numbers recomputed from their raw sums weigh most; a file being readable, or from the
# same run, least: on its own it shows nothing of the step. A check not listed weighs 1.
RESULTS_WEIGHTS: dict[str, float] = {
    **{f"s{s}.results": 0.5 for s in (1, 2, 3, 4)},
    **{f"s{s}.same_run": 0.5 for s in (2, 3, 4)},
    "s1.code_ppl_from_raw": 2,
    "s1.general_ppl_from_raw": 2,
    "s1.same_protocol": 1.5,
    "s2.eos_count": 2,
    "s2.split_98_2": 2,
    "s2.blocks": 1.5,
    "s3.lr_schedule": 2,
    "s3.weights_moved": 2,
    "s3.forgetting_curve": 2,
    "s3.curve_on_headline_tokens": 1.5,
    "s4.adapted_code_ppl_from_raw": 2,
    "s4.adapted_general_ppl_from_raw": 2,
    "s4.code_ppl_drop_consistent": 1.5,
    "s4.forgetting_ratio_consistent": 1.5,
    "s4.study_from_raw": 2,
}


GO = "go-further"
QUESTIONS: dict[str, Question] = {
    q.id: q
    for q in [
        Question("1.1", 1, "corpus_perplexity", 18, "code", ("corpus_perplexity",)),
        Question("1.2", 1, "step 1 results", 8, "results"),
        Question("2.1", 2, "pack_documents", 10, "code", ("pack_documents",)),
        Question("2.2", 2, "split_documents", 7, "code", ("split_documents",), track=GO),
        Question("2.3", 2, "to_blocks", 4, "code", ("to_blocks",), track=GO),
        Question("2.4", 2, "step 2 results", 5, "results"),
        Question("3.1", 3, "lr_at", 10, "code", ("lr_at",)),
        Question("3.2", 3, "optimizer_step", 16, "code", ("optimizer_step",)),
        Question("3.3", 3, "cpt_loop", 6, "code", ("cpt_loop",), track=GO),
        Question("3.4", 3, "flops_per_token and mfu", 4, "code", ("flops_per_token", "mfu"), False, GO),
        Question("3.5", 3, "step 3 results", 8, "results"),
        Question(
            "4.1", 4, "code_ppl_drop and forgetting_ratio", 2, "code", ("code_ppl_drop", "forgetting_ratio"), track=GO
        ),
        Question("4.2", 4, "replay_schedule", 4, "code", ("replay_schedule",), track=GO),
        Question("4.3", 4, "interpolate", 4, "code", ("interpolate",), track=GO),
        Question("4.4", 4, "lora_config", 4, "code", ("lora_config",), track=GO),
        Question("4.5", 4, "choose_variant", 8, "code", ("choose_variant",)),
        Question("4.6", 4, "production_choices", 4, "code", ("production_choices",), False, GO),
        Question("4.7", 4, "step 4 results and the study", 8, "results"),
        Question("W1", 1, "why the step 1 check asserts no direction", 3, "written", track=GO),
        Question("W2", 2, "packing against padding, from your corpus", 3, "written", track=GO),
        Question("W3", 3, "clipping, and what the recipe's experiments show", 3, "written", track=GO),
        Question("W5", 3, "data parallelism at 2, 8 and 64 GPUs", 3, "written", track=GO),
        Question("W4", 4, "your production decision at a floor of 1.03", 9, "written"),
    ]
}

RESULTS_QUESTION = {q.step: q.id for q in QUESTIONS.values() if q.kind == "results"}
RUBRIC_MAX = 3  # a written answer's rubric score: 0-3 (notebooks/RUBRIC.md), times the question's weight
TRACKS = ("core", GO)
# what grade-class --track grades: the core alone (its 100 points), or the core and Go further
GRADED_TRACKS = {"core": ("core",), "full": TRACKS}


def track_points(track: str, kind: str | None = None) -> int:
    """A track's points, of one kind (``auto``: code and results; ``written``) or all."""
    return sum(
        q.points
        for q in QUESTIONS.values()
        if q.track == track and (kind is None or (q.kind == "written") == (kind == "written"))
    )


assert track_points("core") == 100
assert all(sum(CHECK_POINTS[q.id].values()) == q.points for q in QUESTIONS.values() if q.kind == "code")
# A failed gate check means the function does not do what it is for at all: the question earns nothing
# (an optimizer step that leaves every weight as it was is not an optimizer step, whatever it returns).
CHECK_GATES: dict[str, set[str]] = {"3.2": {"moved"}}
# A question's main result: the number or object the lab goes on with. Where one of these checks
# fails, the question keeps at most MAIN_SHARE of its points (the passed checks' points scaled down,
# the rest moved to the failed main check): right sums with a wrong perplexity are not most of 1.1.
# Questions whose checks are separate answers of equal standing (4.1's two functions, 4.5's and
# 4.6's cases) have none.
MAIN_SHARE = 1 / 3
MAIN_RESULT: dict[str, set[str]] = {
    "1.1": {"ppl"},
    "2.1": {"eos_after_each"},
    "2.2": {"whole_documents", "fraction"},
    "2.3": {"values"},
    "3.1": {"warmup", "cosine"},
    "3.2": {"update"},
    "3.3": {"steps"},
    "3.4": {"small_model", "long_block"},
    "4.2": {"total"},
    "4.3": {"blend"},
    "4.4": {"targets"},
}
FUNCTION_QUESTION = {f: q.id for q in QUESTIONS.values() for f in q.functions}
