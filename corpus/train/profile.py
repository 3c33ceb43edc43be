"""The two training profiles, as TrainingArguments and model-loading keywords.

- cpu (the demo default): float32 (bf16 training is emulated and slow on
  CPUs without AVX512-BF16, and TRL's bf16=True default fails there), SDPA
  attention, no DeepSpeed, fully deterministic.
- gpu: bfloat16, flash_attention_2 when `flash_attn` imports (SDPA
  otherwise, logged), gradient checkpointing, a DeepSpeed ZeRO config when
  `deepspeed` imports. Runs under `accelerate launch` for several GPUs or
  nodes. The GPU-only packages are imported behind guards here and nowhere
  else, so the cpu profile never needs them.
"""

from __future__ import annotations

import importlib.util
import json
import logging
from dataclasses import dataclass
from pathlib import Path

from corpus.errors import ConfigError
from corpus.train.config import PhaseConfig, TrainConfig

log = logging.getLogger(__name__)


def _importable(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


@dataclass(frozen=True)
class ResolvedProfile:
    name: str
    dtype: str  # torch dtype name the model is loaded and trained in
    attn_implementation: str
    deepspeed: Path | None
    gradient_checkpointing: bool

    def model_kwargs(self) -> dict:
        import torch

        return {"dtype": getattr(torch, self.dtype), "attn_implementation": self.attn_implementation}

    def describe(self) -> dict:
        return {"profile": self.name, "dtype": self.dtype, "attn_implementation": self.attn_implementation,
                "deepspeed": str(self.deepspeed) if self.deepspeed else None,
                "gradient_checkpointing": self.gradient_checkpointing}


# float32 on CPU: bf16 matmuls are emulated (slow) on AVX2-only CPUs.
CPU_PROFILE = ResolvedProfile("cpu", "float32", "sdpa", None, False)


def load_deepspeed_config(path: Path) -> dict:
    """The ZeRO config as a dict, with a clear error naming the file when it is missing or broken."""
    try:
        config = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"params.yaml train.gpu.deepspeed: {path} not found") from None
    except json.JSONDecodeError as error:
        raise ConfigError(f"{path}: not valid JSON ({error})") from None
    stage = (config.get("zero_optimization") or {}).get("stage")
    if stage not in (0, 1, 2, 3):
        raise ConfigError(f"{path}: zero_optimization.stage must be 0-3, found {stage!r}")
    return config


def resolve_profile(config: TrainConfig, *, cuda_available: bool | None = None) -> ResolvedProfile:
    """What the configured profile means on this machine. `cuda_available` overrides the
    check (tests build the gpu profile on a CPU machine)."""
    if config.profile == "cpu":
        return CPU_PROFILE
    if cuda_available is None:
        import torch

        cuda_available = torch.cuda.is_available()
    if not cuda_available:
        raise ConfigError("params.yaml train.profile gpu: no CUDA device here (use train.profile: cpu on this machine)")
    attention = config.gpu.attn_implementation
    if attention == "flash_attention_2" and not _importable("flash_attn"):
        log.warning("train.gpu.attn_implementation flash_attention_2: flash_attn is not installed; using sdpa")
        attention = "sdpa"
    deepspeed = config.gpu.deepspeed
    if deepspeed is not None:
        load_deepspeed_config(deepspeed)
        if not _importable("deepspeed"):
            log.warning("train.gpu.deepspeed %s: the deepspeed package is not installed; training without it", deepspeed)
            deepspeed = None
    return ResolvedProfile("gpu", "bfloat16", attention, deepspeed, config.gpu.gradient_checkpointing)


def training_kwargs(config: TrainConfig, phase: PhaseConfig, profile: ResolvedProfile, output_dir: Path) -> dict:
    """Keywords shared by SFTConfig, DPOConfig and GRPOConfig for one phase."""
    kwargs = {
        "output_dir": str(output_dir),
        "learning_rate": phase.learning_rate,
        "num_train_epochs": phase.epochs,
        "max_steps": phase.max_steps if phase.max_steps is not None else -1,
        "per_device_train_batch_size": phase.per_device_batch_size,
        "gradient_accumulation_steps": phase.gradient_accumulation_steps,
        "warmup_steps": phase.warmup_steps,
        "lr_scheduler_type": phase.lr_scheduler,
        "weight_decay": phase.weight_decay,
        "optim": "adamw_torch",
        "seed": config.seed,
        "data_seed": config.seed,
        "logging_steps": 1,
        "logging_first_step": True,
        # The stage saves the final model itself (merged, atomically); no mid-run checkpoints.
        "save_strategy": "no",
        "report_to": "none",
        "disable_tqdm": True,
        "dataloader_num_workers": 0,
        "max_length": config.max_length,
    }
    if profile.name == "cpu":
        # Same inputs and seed, same final loss and the same checkpoint bytes.
        kwargs.update(use_cpu=True, bf16=False, fp16=False, full_determinism=True)
    else:
        kwargs.update(bf16=True, gradient_checkpointing=profile.gradient_checkpointing)
        if profile.gradient_checkpointing:
            kwargs["gradient_checkpointing_kwargs"] = {"use_reentrant": False}
        if profile.deepspeed is not None:
            kwargs["deepspeed"] = str(profile.deepspeed)
    return kwargs
