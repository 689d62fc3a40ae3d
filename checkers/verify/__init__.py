"""Verification of a run folder by recomputing what it claims: perplexities on the recorded tokens,
the corpus, and optionally the training itself (`verify`).

May import: checkers.core, checkers.results, cptlab.core, cptlab.data, cptlab.speed, cptlab.model, cptlab.lab,
cptlab.notebook.
"""
