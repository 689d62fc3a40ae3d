"""cptlab: continued pre-training of a causal LM on code, and what it forgets of English."""
from .config import DataSource, LabConfig, TinyBaseConfig, get_config

__version__ = "0.1.0"
__all__ = ["DataSource", "LabConfig", "TinyBaseConfig", "get_config", "__version__"]
