"""Checks of the learner's code: each exercise on fresh random cases against the lab's reference,
with the cases that tell each typical mistake from the answer (`exercises`).

May import: checkers.core, cptlab.core, cptlab.data, cptlab.speed, cptlab.model, cptlab.lab, cptlab.notebook.
"""
