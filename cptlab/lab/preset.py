"""``PRESET = "auto"``, the notebooks' default: the real lab (``gpt2``) where it can run, the embedded
one (``tiny``) everywhere else, and one line that says which and why. A run folder records the
preset this resolves to, never "auto"; ``make lab``, the graders and the tests name theirs."""

from __future__ import annotations

import torch

from cptlab.core.config import LabConfig, get_config
from cptlab.data.sources import AssetNotFoundError, load_model, load_tokenizer, open_hf_dataset

AUTO = "auto"


def _first_row(source) -> None:
    for _ in open_hf_dataset(source):
        return
    raise AssetNotFoundError(f"dataset {source.path!r} ({source.name}, {source.split}) is empty")


def missing_gpt2_assets(cfg: LabConfig | None = None) -> list[str]:
    """What of GPT-2, codeparrot-clean and wikitext-2 does not load from here (the cache, offline)."""
    cfg = cfg or get_config("gpt2")
    checks = {
        "GPT-2": lambda: (load_tokenizer(cfg.base_model), load_model(cfg.base_model)),
        "codeparrot-clean": lambda: _first_row(cfg.code_source),
        "wikitext-2": lambda: (_first_row(cfg.general_source), _first_row(cfg.replay_source)),
    }
    missing = []
    for name, load in checks.items():
        try:
            load()
        except (AssetNotFoundError, OSError, ValueError, KeyError):
            missing.append(name)
    return missing


def resolve_preset(preset: str) -> tuple[str, str]:
    """``(preset, why)``: ``auto`` becomes gpt2 on a CUDA device whose cache holds the three assets,
    tiny otherwise; any other name stays as it is."""
    if preset != AUTO:
        return preset, f"{preset}: as PRESET says"
    if not torch.cuda.is_available():
        return "tiny", "no CUDA device: tiny"
    missing = missing_gpt2_assets()
    if missing:
        return "tiny", (
            f"GPU found, but {' and '.join(missing)} not in the Hugging Face cache: tiny "
            '(set PRESET = "gpt2" to see what was looked for)'
        )
    return "gpt2", "gpt2: GPU found, GPT-2, codeparrot-clean and wikitext-2 in the cache"
