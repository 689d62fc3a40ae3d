"""Grading a class: re-executing each submission in a sandbox (`classroom`), judging learner
functions in their own processes (`judge`), what learners receive (`release`) and the command line
(`grade`, ``python -m checkers``).

May import: checkers.core, checkers.code, checkers.results, checkers.verify, cptlab.core, cptlab.data,
cptlab.speed, cptlab.model, cptlab.lab, cptlab.notebook.
"""
