"""Every hyper-parameter of the lab in one place (nanoGPT style), plus the presets.

A preset overrides only what it must; everything else is the lab's recipe:
AdamW at 5e-5 (about 8% of 6e-4, GPT-3 Small's published peak and nanoGPT's default; the GPT-2
paper gives none), 10 linear warm-up steps, cosine decay to zero over 150 steps, gradient clipping
at 1.0, 256-token blocks, a 98/2 split.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import asdict, dataclass, field
from typing import Any


class ConfigError(ValueError):
    """A bad setting, with a message that says what to do."""


# Settings older run folders may still hold; they are read past, never applied.
RETIRED = {"curve_max_tokens": "the forgetting curve is scored on the headline's evaluation tokens"}


@dataclass
class DataSource:
    """Where one corpus comes from.

    kind:
      ``hf``           ``load_dataset(path, name, split=..., data_files=..., streaming=...)``, column ``field``
                       (a hub id, a local dataset folder, or a builder such as ``json`` with ``data_files``);
      ``py_dir``       every ``.py`` file under ``path`` (``None``: this interpreter's standard library);
      ``text_file``    one English text file, one document;
      ``tiny_english`` the held-out articles of the gensim Wikipedia sample (built by ``cptlab.model.base_model``).
    ``join``: when set, all rows are joined with it into a single document (wikitext's lines).
    """

    kind: str = "hf"
    path: str | None = None
    name: str | None = None
    split: str = "train"
    field: str = "text"
    streaming: bool = False
    data_files: str | list[str] | None = None
    join: str | None = None
    exclude_tests: bool = True


@dataclass
class TinyBaseConfig:
    """The embedded default's own base model: a small GPT-2 pre-trained on English once, then cached.
    Its seed is its own: learners who run the lab with different seeds share one base model."""

    seed: int = 1234
    vocab_size: int = 8192
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 256
    n_positions: int = 256
    pretrain_steps: int = 400
    pretrain_batch_size: int = 8
    pretrain_lr: float = 1e-3
    pretrain_warmup_steps: int = 20
    # WebText held some code; a small share of Python (from the stdlib's own test package,
    # disjoint from the CPT corpus) makes the tiny base tell GPT-2's story in step 1.
    code_fraction: float = 0.03
    max_code_test_files: int = 200


@dataclass
class LabConfig:
    preset: str = "tiny"
    seed: int = 1234
    # --- model: a hub id or a local folder; None means the tiny preset builds its own
    base_model: str | None = None
    # --- data
    code_source: DataSource = field(default_factory=lambda: DataSource(kind="py_dir", path=None))
    general_source: DataSource = field(default_factory=lambda: DataSource(kind="tiny_english"))
    code_token_budget: int | None = None  # stop taking code documents once this many tokens are in
    val_fraction: float = 0.02
    # The validation documents are drawn with this seed, not ``seed``: the split is the preset's, so
    # every learner (whatever seed they train with) and every variant is scored on the same files.
    split_seed: int = 1234
    block_size: int = 256
    # --- the CPT run
    cpt_lr: float = 5e-5
    warmup_steps: int = 10
    max_steps: int = 150
    min_lr_ratio: float = 0.0  # cosine decays to cpt_lr * min_lr_ratio (0: transformers' schedule)
    grad_clip: float = 1.0
    batch_size: int = 4  # windows per micro-batch
    grad_accum: int = 1  # micro-batches per optimizer step
    # AdamW: GPT-3's and nanoGPT's betas (0.9, 0.95); decoupled weight decay 0.1 on every 2-D tensor
    # (the matrices and both embedding tables, nanoGPT's split), none on biases and LayerNorms.
    betas: tuple[float, float] = (0.9, 0.95)
    weight_decay: float = 0.1
    checkpoint_every: int = 25  # steps between resumable checkpoints of the CPT run
    # --- evaluation (one protocol for every perplexity)
    eval_stride: int | None = None  # None: non-overlapping windows of block_size
    eval_batch_size: int = 8
    eval_max_tokens: int | None = None  # deterministic prefix cap per evaluation set (None: the whole set)
    # --- the trade-off study (step 4)
    curve_every: int = (
        15  # evaluate code and English every k CPT steps, on the headline's tokens (the forgetting curve)
    )
    retention_floor: float = 1.05  # the highest forgetting_ratio accepted (this lab's illustration, not a standard)
    stop_at_floor: bool = False  # stop the CPT run at the first curve point above the floor
    replay_fractions: tuple[float, ...] = (0.05, 0.10, 0.25)  # 0% is the pure CPT run itself
    replay_source: DataSource | None = field(default_factory=lambda: DataSource(kind="tiny_english_train"))
    # LoRA: the largest code gain under the retention floor in a sweep of rate (1e-4..1e-3), rank (8, 64)
    # and targets (attention, all linear) on tiny (benchmarks/lora_sweep_tiny.json); forgetting grows
    # steeply with LoRA's rate, so the practitioner's low end (1e-4) with a wide rank wins.
    lora_r: int = 64
    lora_alpha: int = 128  # alpha = 2r ("LoRA Learns Less and Forgets Less")
    lora_lr: float = 1e-4
    lora_targets: str = "all_linear"  # all_linear (c_attn, c_proj, c_fc) | attention (attn.c_attn, attn.c_proj)
    interp_alphas: tuple[float, ...] = (0.0, 0.25, 0.5, 0.75, 1.0)
    # --- hardware
    device: str = "auto"  # auto | cpu | cuda
    precision: str = "auto"  # auto (bf16 autocast where native: Ampere+ GPUs, CPUs with AVX512-BF16/AMX; else fp32)
    torch_compile: bool = False  # pays for its compile time only on long GPU runs; off for 150 steps
    fused_ce: bool | None = None  # fused lm_head + cross-entropy (cptlab.speed.fused); None: on CUDA only
    log_every: int | None = (
        None  # steps between host syncs for the log (rows stay per step); None: 1 on CPU, 10 on CUDA
    )
    # --- the tiny base model
    tiny: TinyBaseConfig = field(default_factory=TinyBaseConfig)

    # ------------------------------------------------------------------ helpers
    def validate(self) -> "LabConfig":
        if self.preset not in PRESETS:
            raise ConfigError(f"unknown preset {self.preset!r}: choose one of {sorted(PRESETS)}")
        if self.cpt_lr <= 0:
            raise ConfigError(f"cpt_lr must be > 0, got {self.cpt_lr}")
        if self.max_steps <= 0:
            raise ConfigError(f"max_steps must be > 0, got {self.max_steps}")
        if not 0 <= self.warmup_steps < self.max_steps:
            raise ConfigError(
                f"warmup_steps must be in [0, max_steps), got {self.warmup_steps} with max_steps={self.max_steps}"
            )
        if self.block_size < 2:
            raise ConfigError(f"block_size must be at least 2, got {self.block_size}")
        if not 0 < self.val_fraction < 0.5:
            raise ConfigError(f"val_fraction must be in (0, 0.5), got {self.val_fraction}")
        if self.batch_size < 1 or self.grad_accum < 1 or self.eval_batch_size < 1:
            raise ConfigError("batch_size, grad_accum and eval_batch_size must be >= 1")
        if self.eval_stride is not None and not 1 <= self.eval_stride <= self.block_size:
            raise ConfigError(f"eval_stride must be in [1, block_size={self.block_size}], got {self.eval_stride}")
        if not all(0 < f < 1 for f in self.replay_fractions):
            raise ConfigError(f"replay_fractions must lie in (0, 1), got {self.replay_fractions}")
        if self.curve_every < 1:
            raise ConfigError(f"curve_every must be >= 1, got {self.curve_every}")
        if self.log_every is not None and self.log_every < 1:
            raise ConfigError(f"log_every must be >= 1 (or unset), got {self.log_every}")
        if self.precision not in ("auto", "fp32", "bf16"):
            raise ConfigError(f"precision must be auto, fp32 or bf16, got {self.precision!r}")
        if self.grad_clip <= 0:
            raise ConfigError(f"grad_clip must be > 0, got {self.grad_clip}")
        if self.checkpoint_every < 1:
            raise ConfigError(
                f"checkpoint_every must be >= 1, got {self.checkpoint_every} (e.g. --set checkpoint_every=25)"
            )
        if self.weight_decay < 0:
            raise ConfigError(f"weight_decay must be >= 0, got {self.weight_decay} (e.g. --set weight_decay=0.1)")
        if not all(0 <= b < 1 for b in self.betas):
            raise ConfigError(f"betas must lie in [0, 1), got {list(self.betas)} (e.g. --set betas=[0.9,0.95])")
        if self.eval_max_tokens is not None and self.eval_max_tokens < self.block_size:
            raise ConfigError(
                f"eval_max_tokens must be at least block_size={self.block_size} (or null for no cap), "
                f"got {self.eval_max_tokens} (e.g. --set eval_max_tokens=40000)"
            )
        if not 0 <= self.min_lr_ratio < 1:
            raise ConfigError(f"min_lr_ratio must lie in [0, 1), got {self.min_lr_ratio}")
        if self.lora_r < 1 or self.lora_alpha < 1 or self.lora_lr <= 0:
            raise ConfigError("lora_r and lora_alpha must be >= 1 and lora_lr > 0")
        if self.lora_targets not in ("all_linear", "attention"):
            raise ConfigError(
                f"lora_targets must be all_linear or attention, got {self.lora_targets!r} (e.g. --set "
                "lora_targets=attention)"
            )
        if self.retention_floor <= 0 or not all(0 <= a <= 1 for a in self.interp_alphas):
            raise ConfigError("retention_floor must be > 0 and interp_alphas must lie in [0, 1]")
        return self

    @property
    def tokens_per_step(self) -> int:
        return self.batch_size * self.grad_accum * self.block_size

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "LabConfig":
        """A config from plain values (a stored results file, ``--set`` overrides): each value is
        parsed to its field's type, or refused with the field's name and a valid example."""
        fields = {f.name: f for f in dataclasses.fields(cls)}
        d = {k: v for k, v in d.items() if k not in RETIRED}
        unknown = set(d) - set(fields)
        if unknown:
            raise ConfigError(f"unknown config keys {sorted(unknown)}; known: {sorted(fields)}")
        return cls(**{k: typed(k, fields[k].type, v, getattr(cls(), k)) for k, v in d.items()})

    def replace(self, **changes: Any) -> "LabConfig":
        return dataclasses.replace(self, **changes)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)


def _sub_config(name: str, kind: type, value: Any):
    if isinstance(value, kind):
        return value
    if not isinstance(value, dict):
        raise ConfigError(f"{name} must be a JSON object of {kind.__name__} fields, got {value!r}")
    known = {f.name: f for f in dataclasses.fields(kind)}
    bad = set(value) - set(known)
    if bad:
        raise ConfigError(f"{name} has unknown keys {sorted(bad)}; known: {sorted(known)}")
    return kind(**{k: typed(f"{name}.{k}", known[k].type, v, getattr(kind(), k)) for k, v in value.items()})


def typed(name: str, annotation: str, value: Any, example: Any) -> Any:
    """``value`` as the field's type (``annotation`` as written in the dataclass): ints stay ints,
    numbers are finite, tuples are tuples of numbers, sources are ``DataSource``."""
    hint = f"(e.g. --set {name}={json.dumps(example, separators=(',', ':'), default=lambda o: '{...}')})"
    kinds = [a.strip() for a in str(annotation).split("|")]
    if value is None:
        if "None" in kinds:
            return None
        raise ConfigError(f"{name} cannot be empty {hint}")
    kind = next(k for k in kinds if k != "None")
    if kind == "bool":
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{name} must be true or false, got {value!r} {hint}")
    if kind == "int":
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{name} must be a whole number, got {value!r} {hint}")
        return value
    if kind == "float":
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ConfigError(f"{name} must be a finite number, got {value!r} {hint}")
        return float(value)
    if kind == "str":
        if isinstance(value, list) and "list[str]" in kinds and all(isinstance(x, str) for x in value):
            return value
        if not isinstance(value, str):
            raise ConfigError(f"{name} must be a string, got {value!r} {hint}")
        return value
    if kind.startswith("tuple["):
        if not isinstance(value, (list, tuple)) or not all(
            isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) for x in value
        ):
            raise ConfigError(f"{name} must be a list of finite numbers, got {value!r} {hint}")
        if "..." not in kind and len(value) != kind.count(",") + 1:
            raise ConfigError(f"{name} must hold {kind.count(',') + 1} numbers, got {len(value)} {hint}")
        return tuple(float(x) for x in value)
    if kind in ("DataSource", "TinyBaseConfig"):
        return _sub_config(name, DataSource if kind == "DataSource" else TinyBaseConfig, value)
    raise ConfigError(f"{name}: cannot read a {kind} from {value!r}")


def _tiny() -> LabConfig:
    # A curve point scores both evaluation sets (144k tokens, ~20 s on a 2-core CPU in fp32): three
    # points after step 0 instead of ten keep `make lab TRACK=core` near 10 minutes there.
    return LabConfig(preset="tiny", curve_every=50)


def _gpt2() -> LabConfig:
    return LabConfig(
        preset="gpt2",
        base_model="gpt2",
        code_source=DataSource(
            kind="hf", path="codeparrot/codeparrot-clean", split="train", field="content", streaming=True
        ),
        general_source=DataSource(
            kind="hf", path="wikitext", name="wikitext-2-raw-v1", split="test", field="text", join="\n\n"
        ),
        replay_source=DataSource(
            kind="hf", path="wikitext", name="wikitext-2-raw-v1", split="train", field="text", join="\n\n"
        ),
        # 2% of 3M tokens = 60k validation tokens, above the 50k the lab asks for.
        code_token_budget=3_000_000,
        batch_size=16,
        eval_batch_size=16,
        eval_max_tokens=None,
    )


def _smoke() -> LabConfig:
    """Seconds, not minutes: CI runs the four notebooks on it. Same code path, smaller everything."""
    return LabConfig(
        preset="smoke",
        block_size=64,
        max_steps=30,
        warmup_steps=3,
        batch_size=4,
        cpt_lr=2e-3,
        code_token_budget=400_000,
        eval_max_tokens=16_000,  # ~4 document pieces per set: intervals exist, but say little (the study notes it)
        curve_every=5,
        lora_r=8,
        lora_alpha=16,
        lora_lr=2e-2,
        tiny=TinyBaseConfig(
            vocab_size=2048,
            n_layer=2,
            n_head=2,
            n_embd=64,
            n_positions=64,
            pretrain_steps=120,
            pretrain_batch_size=8,
            pretrain_lr=3e-3,
            pretrain_warmup_steps=10,
            code_fraction=0.1,
            max_code_test_files=120,
        ),
    )


PRESETS = {"tiny": _tiny, "gpt2": _gpt2, "smoke": _smoke}


def get_config(preset: str = "tiny", **overrides: Any) -> LabConfig:
    """The preset's config with ``overrides`` applied through the same normalisation as a stored
    config (``from_dict``: lists to tuples, dicts to ``DataSource``), then validated; unknown names
    are an error, not ignored."""
    if preset not in PRESETS:
        raise ConfigError(
            f"unknown preset {preset!r}: choose one of {sorted(PRESETS)} (tiny runs anywhere, gpt2 wants a GPU)"
        )
    known = {f.name for f in dataclasses.fields(LabConfig)}
    bad = set(overrides) - known
    if bad & set(RETIRED):
        raise ConfigError("; ".join(f"{k} is no longer a setting: {RETIRED[k]}" for k in sorted(bad & set(RETIRED))))
    if bad:
        raise ConfigError(f"unknown config keys {sorted(bad)}; known: {sorted(known)}")
    base = {f.name: getattr(PRESETS[preset](), f.name) for f in dataclasses.fields(LabConfig)}
    return LabConfig.from_dict({**base, **overrides}).validate()
