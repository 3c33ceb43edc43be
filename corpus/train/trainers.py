"""One TRL phase each: SFT from a model folder, DPO from the SFT folder.

Each phase writes a complete Hugging Face folder (weights, config,
tokenizer, chat template; LoRA adapters merged in) atomically: a failed run
leaves no half-written checkpoint, and every generator backend can load the
result as it loads the base model. A phase with no records (the demo's
round can yield no DPO pair) copies its input model and says so.
"""

from __future__ import annotations

import logging
import math
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from corpus.atomic import atomic_dir, write_json
from corpus.train.config import PhaseConfig, TrainConfig
from corpus.train.data import FittedRecords
from corpus.train.profile import ResolvedProfile, training_kwargs

log = logging.getLogger(__name__)

# Files of a model folder that a copy carries (a phase without data).
MODEL_FILES = ("*.json", "*.safetensors", "*.jinja", "*.txt", "*.model")


@dataclass
class PhaseResult:
    phase: str
    records: int
    records_used: int  # trained on: after the caps and the max_length fit
    steps: int = 0
    final_loss: float | None = None
    seconds: float = 0.0
    skipped: str | None = None  # why no training ran
    truncated: int = 0
    over_budget: int = 0
    log_history: list[dict] = field(default_factory=list)

    def summary(self) -> dict:
        return {
            "records": self.records, "records_used": self.records_used, "steps": self.steps,
            "final_loss": self.final_loss, "seconds": round(self.seconds, 2), "skipped": self.skipped,
            "history_truncated": self.truncated, "over_max_length": self.over_budget,
        }


def records_for(phase: PhaseConfig, records: list[dict]) -> list[dict]:
    """The records a phase trains on: sorted by id, capped by max_records and by what
    max_steps can consume in one pass (the rest would never be seen, yet DPO would
    still compute their reference log-probabilities)."""
    chosen = sorted(records, key=lambda r: r["id"])
    if phase.max_records is not None:
        chosen = chosen[: phase.max_records]
    if phase.max_steps is not None:
        chosen = chosen[: phase.max_steps * phase.per_device_batch_size * phase.gradient_accumulation_steps]
    return chosen


def _lora(config: TrainConfig):
    if not config.lora.enabled:
        return None
    from peft import LoraConfig

    targets = config.lora.target_modules
    return LoraConfig(r=config.lora.r, lora_alpha=config.lora.alpha, lora_dropout=config.lora.dropout,
                      target_modules=targets if isinstance(targets, str) else list(targets), task_type="CAUSAL_LM")


def load_model(model_dir: Path, profile: ResolvedProfile):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(str(model_dir), **profile.model_kwargs())
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer


def _figure(value) -> float | None:
    """A logged figure as a JSON-safe float (TRL logs None or NaN for one it could not compute)."""
    if not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return round(float(value), 6)


def _history(trainer, logged: dict[str, str] | None = None) -> list[dict]:
    """TRL's per-step entries (those with a loss): the loss and DPO's rewards/* figures, or,
    with `logged` ({name: TRL log key}), those figures (GRPO's reward, reward_std, ...)."""
    rows = []
    for entry in trainer.state.log_history:
        if "loss" in entry and "step" in entry:
            if logged is None:
                figures = {"loss": _figure(entry["loss"]),
                           **{k: _figure(v) for k, v in entry.items() if k.startswith("rewards/")
                              and isinstance(v, (int, float))}}
            else:
                figures = {name: _figure(entry.get(key)) for name, key in logged.items() if key in entry}
            rows.append({"step": int(entry["step"]), **figures})
    return rows


def _final_loss(trainer) -> float | None:
    losses = [e["loss"] for e in trainer.state.log_history if "loss" in e]
    train_loss = next((e["train_loss"] for e in reversed(trainer.state.log_history) if "train_loss" in e), None)
    value = losses[-1] if losses else train_loss
    return None if value is None or not math.isfinite(value) else round(float(value), 6)


def save_model(model, tokenizer, out_dir: Path, provenance: dict) -> None:
    """Merge adapters (if any) and write a full folder atomically."""
    if hasattr(model, "merge_and_unload"):
        model = model.merge_and_unload()
    # Gradient checkpointing turns the KV cache off in the config; the saved model is
    # for generation, where the cache is what makes sampling fast.
    model.config.use_cache = True
    with atomic_dir(out_dir) as staging:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        write_json(staging / "training.json", provenance)


def copy_model(model_dir: Path, out_dir: Path, provenance: dict) -> None:
    with atomic_dir(out_dir) as staging:
        for pattern in MODEL_FILES:
            for path in sorted(Path(model_dir).glob(pattern)):
                if path.name not in ("training.json", "provenance.json"):
                    shutil.copy2(path, staging / path.name)
        write_json(staging / "training.json", provenance)


def run_phase(phase_name: str, trainer_factory, model_dir: Path, out_dir: Path, fitted: FittedRecords, total: int,
              provenance: dict, logged: dict[str, str] | None = None) -> PhaseResult:
    result = PhaseResult(phase_name, records=total, records_used=len(fitted.rows), truncated=fitted.truncated,
                         over_budget=fitted.over_budget)
    if not fitted.rows:
        result.skipped = f"no {phase_name} records: the {phase_name} model is a copy of its input model"
        log.warning("%s: %s", out_dir, result.skipped)
        from accelerate import PartialState

        state = PartialState()
        if state.is_main_process:
            copy_model(model_dir, out_dir, {**provenance, "skipped": result.skipped})
        state.wait_for_everyone()
        return result
    started = time.perf_counter()
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    # Trainer scratch (its output_dir) beside the out, removed whatever happens.
    with tempfile.TemporaryDirectory(prefix=f".{phase_name}-", dir=out_dir.parent) as scratch:
        trainer = trainer_factory(Path(scratch))
        trainer.train()
        result.seconds = time.perf_counter() - started
        result.steps = int(trainer.state.global_step)
        result.final_loss = _final_loss(trainer)
        result.log_history = _history(trainer, logged)
        # Under `accelerate launch` every process trains; one writes the folder.
        trainer.accelerator.wait_for_everyone()
        if trainer.accelerator.is_main_process:
            # No timings in the folder: its bytes (and so its DVC hash) must depend on the inputs only.
            recorded = {k: v for k, v in result.summary().items() if k != "seconds"}
            save_model(trainer.model, trainer.processing_class, out_dir, {**provenance, **recorded})
        trainer.accelerator.wait_for_everyone()
    log.info("%s: %d step(s) on %d record(s) in %.1f s, final loss %s", phase_name, result.steps,
             result.records_used, result.seconds, result.final_loss)
    return result


def train_sft(model_dir: Path, fitted: FittedRecords, total: int, out_dir: Path, config: TrainConfig,
              profile: ResolvedProfile, provenance: dict) -> PhaseResult:
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    def factory(scratch: Path):
        model, tokenizer = load_model(model_dir, profile)
        args = SFTConfig(**training_kwargs(config, config.sft, profile, scratch))
        return SFTTrainer(model=model, args=args, train_dataset=Dataset.from_list(fitted.rows),
                          processing_class=tokenizer, peft_config=_lora(config))

    return run_phase("sft", factory, model_dir, out_dir, fitted, total, provenance)


def train_dpo(model_dir: Path, fitted: FittedRecords, total: int, out_dir: Path, config: TrainConfig,
              profile: ResolvedProfile, provenance: dict) -> PhaseResult:
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    def factory(scratch: Path):
        model, tokenizer = load_model(model_dir, profile)
        args = DPOConfig(**training_kwargs(config, config.dpo, profile, scratch), beta=config.dpo.beta,
                         loss_type=list(config.dpo.loss_type),
                         precompute_ref_log_probs=config.dpo.precompute_ref_log_probs)
        # ref_model None: the reference is the input (SFT) model, frozen - with LoRA, the
        # adapter-disabled model; with precomputed log-probs, no second copy is kept.
        return DPOTrainer(model=model, ref_model=None, args=args, train_dataset=Dataset.from_list(fitted.rows),
                          processing_class=tokenizer, peft_config=_lora(config))

    return run_phase("dpo", factory, model_dir, out_dir, fitted, total, provenance)
