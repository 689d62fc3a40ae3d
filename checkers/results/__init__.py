"""Checks of each step's results file, recomputed from raw sums (`steps`), and the points the
executed notebooks' check cells recorded (`score`).

May import: checkers.core, cptlab.core, cptlab.data, cptlab.speed, cptlab.model, cptlab.lab, cptlab.notebook.
"""
