"""Checks of each step's results file, recomputed from raw sums: one module per step (`step1` ..
`step4`), what they share (`common`: reading, typed values, intervals), and `steps`, which scores
them (points, gates, a run made with none of the learner's code); and the points the executed
notebooks' check cells recorded (`score`).

May import: checkers.core, cptlab.core, cptlab.data, cptlab.speed, cptlab.model, cptlab.lab, cptlab.notebook.
"""
