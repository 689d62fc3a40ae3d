"""cptlab: continued pre-training of a causal LM on code, and what it forgets of English.

Layers, lowest first: ``core`` (recipe, step files), ``data`` and ``speed``, ``model`` (perplexity,
training), ``lab`` (the steps and the study), ``notebook`` (what the notebooks call); on top the
``cptlab`` command (``cli``). Each sub-package's docstring says what it may import; the lab never
imports the grader (``checkers``): ``cptlab lab`` runs it as its own process.

May import: cptlab.core, cptlab.data, cptlab.speed, cptlab.model, cptlab.lab, cptlab.notebook.
"""

from cptlab.core.config import DataSource, LabConfig, TinyBaseConfig, get_config

__version__ = "0.1.0"
__all__ = ["DataSource", "LabConfig", "TinyBaseConfig", "get_config", "__version__"]
