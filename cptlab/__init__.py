"""cptlab: continued pre-training of a causal LM on code, and what it forgets of English.

Layers, lowest first: ``core`` (recipe, step files), ``data`` and ``speed``, ``model`` (perplexity,
training), ``lab`` (the steps and the study), ``notebook`` (what the notebooks call); on top the
``cptlab`` command (``cli``). Each sub-package's docstring says what it may import; the lab never
imports the grader (``checkers``): ``cptlab lab`` runs it as its own process.

May import: cptlab.core, cptlab.data, cptlab.speed, cptlab.model, cptlab.lab, cptlab.notebook.
"""

import sys

# nbformat validates notebooks with jsonschema, which imports rfc3987_syntax where it is installed
# (JupyterLab's jupyter-events asks for it): ~35 Earley parsers built at import, 2 s on a 2-core CPU,
# in every process that reads a notebook, for the "iri" formats that no notebook schema uses
# (python-jsonschema/jsonschema#1428). Marked absent, jsonschema skips those two formats.
if "jsonschema" not in sys.modules:
    sys.modules.setdefault("rfc3987_syntax", None)

from cptlab.core.config import DataSource, LabConfig, TinyBaseConfig, get_config

__version__ = "0.1.0"
__all__ = ["DataSource", "LabConfig", "TinyBaseConfig", "get_config", "__version__"]
