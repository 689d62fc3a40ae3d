"""In a notebook, the lab's own errors show as one clear message, not a wall of traceback."""

from __future__ import annotations


def lab_errors() -> tuple[type[BaseException], ...]:
    # imported here: the notebook executor reads STOPPED without loading torch
    from cptlab.core.config import ConfigError
    from cptlab.core.results import MissingStepError
    from cptlab.data.corpus import CorpusError
    from cptlab.data.sources import AssetNotFoundError
    from cptlab.model.train import TrainingDivergedError

    return (ConfigError, CorpusError, MissingStepError, AssetNotFoundError, TrainingDivergedError)


STOPPED = "The lab stopped here, with this message:"


def friendly_errors() -> None:
    try:
        from IPython import get_ipython
    except ImportError:
        return
    ip = get_ipython()
    if ip is None:
        return

    def handler(shell, etype, value, tb, tb_offset=None):
        msg = f"{etype.__name__}: {value}"
        print("\n".join(["-" * 72, STOPPED, "", msg, "-" * 72]))
        return [msg]

    ip.set_custom_exc(lab_errors(), handler)
