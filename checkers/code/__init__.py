"""Checks of the learner's code: each exercise on fresh random cases against the lab's reference,
with the cases that tell each typical mistake from the answer. `harness` runs a question's cases and
builds its report; one module per question family holds its checks beside their mistakes
(`perplexity`, `corpus`, `training`, `loop`, `speed`, `tradeoff`, `scenarios`); `exercises` is
the index of them all.

May import: checkers.core, cptlab.core, cptlab.data, cptlab.speed, cptlab.model, cptlab.lab, cptlab.notebook.
"""
