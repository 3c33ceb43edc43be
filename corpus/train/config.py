"""Typed view of params.yaml `train.*`: one dataclass per concern, checked once.

The demo values in params.yaml are caps sized for a 2-core CPU; the
comments there give the paper's full-scale recipe (ReMedi: AdamW, learning
rate 5e-6, effective batch 16 through gradient accumulation; DPO beta 0.1).
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from corpus.errors import ConfigError

PROFILES = ("cpu", "gpu")
METHODS = ("dpo", "grpo")


@dataclass(frozen=True)
class PhaseConfig:
    """One TRL trainer run (SFT, or the preference phase)."""

    learning_rate: float = 5e-6
    epochs: float = 1.0
    # A cap on optimiser steps (null: the epochs decide); the CPU demo's budget knob.
    max_steps: int | None = None
    per_device_batch_size: int = 1
    # Effective batch = per_device_batch_size x gradient_accumulation_steps x processes.
    gradient_accumulation_steps: int = 16
    # Linear warm-up steps (transformers 5 reads a value below 1 as a fraction of the steps).
    warmup_steps: float = 0
    lr_scheduler: str = "linear"
    weight_decay: float = 0.0
    # Train on at most this many records, the first by id (null: all).
    max_records: int | None = None

    def check(self, name: str) -> None:
        if self.learning_rate <= 0:
            raise ConfigError(f"params.yaml train.{name}.learning_rate: expected > 0, found {self.learning_rate}")
        if self.max_steps is not None and self.max_steps < 1:
            raise ConfigError(f"params.yaml train.{name}.max_steps: expected >= 1 or null, found {self.max_steps}")
        if self.per_device_batch_size < 1 or self.gradient_accumulation_steps < 1:
            raise ConfigError(f"params.yaml train.{name}: batch size and gradient_accumulation_steps must be >= 1")


@dataclass(frozen=True)
class DPOPhaseConfig(PhaseConfig):
    beta: float = 0.1
    # TRL loss names; ["sigmoid", "sft"] is DPO plus an NLL term on the chosen text (RPO).
    loss_type: tuple[str, ...] = ("sigmoid",)
    # Reference log-probabilities computed once before training (one forward per pair),
    # not at every step: the reference model never changes.
    precompute_ref_log_probs: bool = True


@dataclass(frozen=True)
class LoRAConfig:
    # LoRA adapters (peft), merged into a full model folder after each phase, so the
    # next phase and the next round's sampler read a plain checkpoint.
    enabled: bool = False
    r: int = 16
    alpha: int = 32
    dropout: float = 0.0
    target_modules: str | tuple[str, ...] = "all-linear"


@dataclass(frozen=True)
class GPUConfig:
    """What the gpu profile adds; never read on the cpu profile."""

    # DeepSpeed ZeRO config (JSON) used when deepspeed imports; null: plain DDP / one GPU.
    deepspeed: Path | None = Path("configs/deepspeed_zero2.json")
    gradient_checkpointing: bool = True
    # flash_attention_2 when flash_attn imports, else sdpa (logged).
    attn_implementation: str = "flash_attention_2"


@dataclass(frozen=True)
class TrainConfig:
    profile: str = "cpu"
    method: str = "dpo"
    seed: int = 42
    # Tokens of prompt + completion; the patient history is cut (oldest visits first) to fit,
    # never the question, its options or the answer format.
    max_length: int = 1024
    # torch intra-op threads on CPU (null: torch's default).
    threads: int | None = None
    lora: LoRAConfig = LoRAConfig()
    sft: PhaseConfig = PhaseConfig()
    dpo: DPOPhaseConfig = DPOPhaseConfig(learning_rate=5e-7)
    # GRPO settings (corpus.train.grpo.GRPOSettings fields), read when method is grpo.
    grpo: dict = field(default_factory=dict)
    gpu: GPUConfig = GPUConfig()

    def __post_init__(self) -> None:
        if self.profile not in PROFILES:
            raise ConfigError(f"params.yaml train.profile: expected one of {', '.join(PROFILES)}, found {self.profile!r}")
        if self.method not in METHODS:
            raise ConfigError(f"params.yaml train.method: expected one of {', '.join(METHODS)}, found {self.method!r}")
        if self.max_length < 64:
            raise ConfigError(f"params.yaml train.max_length: expected >= 64 tokens, found {self.max_length}")
        self.sft.check("sft")
        self.dpo.check("dpo")


def _dataclass_from(cls, value: Any, where: str, **converters):
    value = value or {}
    if not isinstance(value, dict):
        raise ConfigError(f"params.yaml {where}: expected a mapping, found {type(value).__name__}")
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(value) - known)
    if unknown:
        raise ConfigError(f"params.yaml {where}: unknown key(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    section = dict(value)
    for key, convert in converters.items():
        if key in section and section[key] is not None:
            section[key] = convert(section[key])
    try:
        return cls(**section)
    except TypeError as error:
        raise ConfigError(f"params.yaml {where}: {error}") from None


def _tuple_or_str(value):
    return value if isinstance(value, str) else tuple(value)


def train_config(params: dict[str, Any]) -> TrainConfig:
    section = params.get("train") or {}
    phase = {"learning_rate": float, "epochs": float, "weight_decay": float}
    return _dataclass_from(
        TrainConfig, section, "train",
        lora=lambda v: _dataclass_from(LoRAConfig, v, "train.lora", target_modules=_tuple_or_str),
        sft=lambda v: _dataclass_from(PhaseConfig, v, "train.sft", **phase),
        dpo=lambda v: _dataclass_from(DPOPhaseConfig, v, "train.dpo", beta=float,
                                      loss_type=lambda x: (x,) if isinstance(x, str) else tuple(x), **phase),
        gpu=lambda v: _dataclass_from(GPUConfig, v, "train.gpu", deepspeed=Path),
        grpo=lambda v: dict(v or {}),
    )
