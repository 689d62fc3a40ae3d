"""Grading a class (`classroom`): reading submissions and merging their answers by meaning
(`submissions`), the sandbox a notebook runs in (`sandbox`), grading one learner (`learner`),
judging learner functions in their own processes (`judge`), copy and reference flags (`flags`),
a learner's result (`result`) and the gradebook made of them (`gradebook`); what learners
receive (`release`) and the command line (`grade`, ``python -m checkers``).

May import: checkers.core, checkers.code, checkers.results, checkers.verify, cptlab.core, cptlab.data,
cptlab.speed, cptlab.model, cptlab.lab, cptlab.notebook.
"""
