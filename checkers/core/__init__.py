"""What every check shares: the check collector (`report`), the question table with its points
(`questions`), the thresholds derived from the recipe (`thresholds`) and the safe reading of
files a learner hands in (`safe_files`).

May import: cptlab.core, cptlab.data, cptlab.speed, cptlab.model, cptlab.lab, cptlab.notebook.
"""
