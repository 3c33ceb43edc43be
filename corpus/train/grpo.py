"""RLVR option of the train stage: TRL's GRPOTrainer with a correct-answer reward.

`train.method: grpo` trains the round's SFT model on the train questions with
reinforcement learning from a verifiable reward (C-Reason, arXiv 2505.02722;
EHRMIND's SFT warm-up then RLVR, arXiv 2505.24105): for every question the
policy samples `num_generations` answers to the project's plain sampling
prompt, each is scored 1 if the project's parser reads the gold option out of
it and 0 otherwise (corpus/train/rewards.py), and GRPO pushes up the answers
that beat their group's mean. No pair file is used: the reward replaces the
preference data.

The run goes through corpus.train.trainers like SFT and DPO: training runs in
a scratch folder that is deleted whatever happens, and the final weights,
tokenizer and training.json are renamed into `out_dir` only once complete
(corpus/atomic.py), so a failed run leaves no half-written model and keeps
the previous one; the training profile (cpu | gpu, corpus/train/profile.py)
sets dtype, attention, checkpointing and DeepSpeed as for the other phases.

TRL 1.16 specifics that shape this module (read from trl/trainer/grpo_config.py):

* `per_device_train_batch_size` counts completions, not prompts. The
  generation batch (per-device batch x processes x gradient accumulation
  steps, by default) must be a whole number of prompt groups: divisible by
  `num_generations`. Each optimizer step sees that many completions, i.e.
  generation batch / num_generations distinct questions.
* `num_generations` must be at least 2 (a group of one has no advantage).
* GRPOConfig defaults to bf16=True and gradient_checkpointing=True; on CPU
  bf16 is off (it fails or crawls there) and checkpointing is a setting.
* There is no prompt truncation in GRPO (no `max_prompt_length`): prompts go in
  whole, so the CPU profile keeps them short through its question caps.
* With beta = 0 (TRL's default) no reference model is loaded at all.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from corpus.generate.prompts import question_messages, sampling_template
from corpus.train.data import FittedRecords
from corpus.train.profile import CPU_PROFILE, ResolvedProfile
from corpus.train.rewards import correct_answer_reward
from corpus.train.trainers import PhaseResult, load_model, run_phase

__all__ = ["GRPOSettings", "grpo_dataset", "grpo_phase", "train_grpo"]

log = logging.getLogger(__name__)

LOSS_TYPES = ("grpo", "dr_grpo", "dapo", "bnpo", "cispo", "sapo", "luspo", "vespo")
SCALE_REWARDS = ("group", "batch", "none")
# Per-step figures kept from TRL's log for the summary and loss-curve plots:
# summary name -> TRL's log key.
LOGGED = {
    "loss": "loss",
    "reward": "reward",
    "reward_std": "reward_std",
    "frac_reward_zero_std": "frac_reward_zero_std",
    "completion_length": "completions/mean_length",
    "learning_rate": "learning_rate",
    "kl": "kl",
}


@dataclass(frozen=True)
class GRPOSettings:
    """Every GRPO knob the pipeline sets; one params.yaml key each (`train.grpo.<field>`).

    Defaults are the CPU demo profile (SmolLM2-135M in float32 on 2 cores).
    Measured there: one step of 4 completions to one demo question (~600
    prompt tokens; the untrained model boxed an answer in ~5 tokens) took 80 s
    wall, 55 s CPU, on 2 cores shared with other jobs: a step costs about a
    batch-1 SFT step per completion, so the CPU budget is steps x generations.
    Full-scale notes: DeepSeek-R1-style RLVR runs (and TRL's own defaults,
    written for them) use 8-16 generations per prompt, learning rate 1e-6,
    beta 0 to 1e-3 and completions of 1-4 K tokens on GPUs with vLLM. C-Reason
    trained Phi-4 (14B) with RL on registry questions; EHRMIND a 3B model with
    GRPO after an SFT warm-up. Their exact step counts, group sizes and batch
    sizes are not restated here: this project has not verified them.
    """

    # Optimizer steps. Each step generates (per_device_train_batch_size x
    # gradient_accumulation_steps) completions: the whole cost of a step.
    max_steps: int = 4
    # Completions sampled per question (the "group" GRPO normalises over). At
    # least 2; TRL's default and common full-scale value 8, DeepSeek-R1 16.
    # A binary reward needs a group with both 0s and 1s to give any gradient,
    # so small groups waste more steps on all-correct or all-wrong questions.
    num_generations: int = 4
    # Completions (not prompts) per device per forward/backward. With gradient
    # accumulation, their product must be divisible by num_generations.
    per_device_train_batch_size: int = 4
    # Micro-batches per optimizer step; GPU runs reach an effective batch of
    # 16+ questions x num_generations this way.
    gradient_accumulation_steps: int = 1
    # Generated tokens per completion. The answer must fit in it: a rationale
    # cut before its \boxed{} scores 0. 128 on CPU; full-scale 1024-4096.
    max_completion_length: int = 128
    # AdamW learning rate. 1e-6 is TRL's GRPO default and the usual RLVR value
    # (an order below SFT's 5e-6: RL updates are noisy).
    learning_rate: float = 1e-6
    # KL penalty to the starting (SFT) model. 0 skips the reference model
    # (TRL's default, DAPO / Dr. GRPO); DeepSeek-R1 used 1e-3, the original
    # GRPO 0.04. Set it > 0 to keep the policy near the SFT rationale style.
    beta: float = 0.0
    # Loss aggregation over tokens: TRL's default "dapo" normalises by the
    # active tokens of the global batch (no length bias); "grpo" is the
    # original per-sequence mean; "dr_grpo" a constant. See LOSS_TYPES.
    loss_type: str = "dapo"
    # Reward scaling in the advantage: "group" (GRPO, divide by the group's
    # std), "batch", or "none" (Dr. GRPO: no question-difficulty bias).
    scale_rewards: str = "group"
    # PPO-style clip range of the importance ratio (TRL default 0.2; DAPO
    # raises the upper side to 0.28 with epsilon_high, not exposed here).
    epsilon: float = 0.2
    # Optimisation passes over each generated batch (mu). 1 = on-policy, the
    # clip then never binds; >1 reuses generations.
    num_iterations: int = 1
    # Sampling of the completions: the project's own sampling stage uses
    # temperature 0.7, top_p 0.95, so RL explores around what the corpus saw.
    temperature: float = 0.7
    top_p: float = 0.95
    # Log every step: the summary's log_history is the loss/reward curve.
    logging_steps: int = 1
    # Recompute activations in the backward pass: saves memory, costs ~30% of
    # the step time. Off for small CPU models; on for 7B on GPU.
    gradient_checkpointing: bool = False

    @classmethod
    def from_params(cls, params: Mapping[str, Any] | None) -> "GRPOSettings":
        """Settings from params.yaml's `train.grpo` mapping; an unknown key is an error, not ignored."""
        params = dict(params or {})
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(params) - known)
        if unknown:
            raise ValueError(f"train.grpo: unknown keys {unknown}; expected some of {sorted(known)}")
        return cls(**params)

    def __post_init__(self) -> None:
        # YAML 1.1 reads 1e-6 (no dot) as a string and 0 as an int: take any
        # number for a float field, and say which key when it is not one.
        for f in fields(self):
            if f.type == "float":
                value = getattr(self, f.name)
                try:
                    object.__setattr__(self, f.name, float(value))
                except (TypeError, ValueError):
                    raise ValueError(f"train.grpo.{f.name}: expected a number, found {value!r}") from None
        positive = ("max_steps", "num_generations", "per_device_train_batch_size", "gradient_accumulation_steps",
                    "max_completion_length", "num_iterations", "logging_steps")
        for name in positive:
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ValueError(f"train.grpo.{name}: expected a positive integer, found {getattr(self, name)!r}")
        if self.num_generations < 2:
            raise ValueError(
                f"train.grpo.num_generations: expected at least 2 (GRPO's advantage compares a completion with its "
                f"group), found {self.num_generations}"
            )
        if self.loss_type not in LOSS_TYPES:
            raise ValueError(f"train.grpo.loss_type: expected one of {LOSS_TYPES}, found {self.loss_type!r}")
        if self.scale_rewards not in SCALE_REWARDS:
            raise ValueError(f"train.grpo.scale_rewards: expected one of {SCALE_REWARDS}, found {self.scale_rewards!r}")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"train.grpo.top_p: expected a value in (0, 1], found {self.top_p!r}")
        if self.temperature <= 0.0:
            raise ValueError(f"train.grpo.temperature: expected a positive value (GRPO samples), found {self.temperature!r}")
        if self.learning_rate <= 0.0 or self.beta < 0.0 or self.epsilon <= 0.0:
            raise ValueError(
                f"train.grpo: expected learning_rate > 0, beta >= 0, epsilon > 0; found "
                f"{self.learning_rate!r}, {self.beta!r}, {self.epsilon!r}"
            )

    def check_batch(self, processes: int = 1) -> None:
        """TRL's rule, said in this project's param names: a generation batch holds whole prompt groups."""
        completions = self.per_device_train_batch_size * processes * self.gradient_accumulation_steps
        if completions % self.num_generations:
            raise ValueError(
                f"train.grpo: per_device_train_batch_size ({self.per_device_train_batch_size}) x processes "
                f"({processes}) x gradient_accumulation_steps ({self.gradient_accumulation_steps}) = {completions} "
                f"completions per step, which is not a multiple of num_generations ({self.num_generations}); "
                f"TRL 1.16 needs whole groups of num_generations completions per question"
            )

    def questions_per_step(self, processes: int = 1) -> int:
        return self.per_device_train_batch_size * processes * self.gradient_accumulation_steps // self.num_generations


def grpo_dataset(questions: list[dict]):
    """A TRL prompt-only dataset: the plain sampling prompt (conversational) plus the reward's columns.

    `answer` and `options` reach correct_answer_reward as keyword arguments;
    `question_id` travels along for traceability (TRL passes it too, unused).
    """
    from datasets import Dataset

    if not questions:
        raise ValueError("train_grpo: no questions to train on (expected the train split's question records)")
    template = sampling_template()
    rows = []
    for question in questions:
        options = list(question["options"])
        if question["answer"] not in options:
            raise ValueError(f"question {question.get('id')}: answer {question['answer']!r} is not among {options!r}")
        rows.append(
            {
                "prompt": question_messages(question, template),
                "answer": question["answer"],
                "options": options,
                "question_id": question["id"],
            }
        )
    return Dataset.from_list(rows)


def _grpo_config(settings: GRPOSettings, output_dir: Path, *, seed: int, profile: ResolvedProfile):
    from trl import GRPOConfig

    cpu = profile.name == "cpu"
    extra = {"deepspeed": str(profile.deepspeed)} if profile.deepspeed is not None else {}
    return GRPOConfig(
        output_dir=str(output_dir),
        max_steps=settings.max_steps,
        per_device_train_batch_size=settings.per_device_train_batch_size,
        gradient_accumulation_steps=settings.gradient_accumulation_steps,
        num_generations=settings.num_generations,
        max_completion_length=settings.max_completion_length,
        learning_rate=settings.learning_rate,
        beta=settings.beta,
        loss_type=settings.loss_type,
        scale_rewards=settings.scale_rewards,
        epsilon=settings.epsilon,
        num_iterations=settings.num_iterations,
        temperature=settings.temperature,
        top_p=settings.top_p,
        logging_steps=settings.logging_steps,
        gradient_checkpointing=settings.gradient_checkpointing or profile.gradient_checkpointing,
        # GRPOConfig defaults to bf16=True, which fails on CPU (FACTS.md, TRL 1.16).
        use_cpu=cpu,
        bf16=profile.dtype == "bfloat16",
        # The pipeline owns checkpoints (out_dir, DVC) and metrics (the summary):
        # nothing is saved mid-run, nothing is reported anywhere.
        save_strategy="no",
        report_to="none",
        disable_tqdm=True,
        log_completions=False,
        # Same inputs and seed, same run: sampling, shuffling and init all seeded.
        seed=seed,
        data_seed=seed,
        dataloader_num_workers=0,
        **extra,
    )


def grpo_phase(model_dir: Path, questions: list[dict], out_dir: Path, settings: GRPOSettings, *, seed: int,
               profile: ResolvedProfile = CPU_PROFILE, provenance: dict | None = None) -> PhaseResult:
    """Train `model_dir` (a Hugging Face folder, the round's SFT model) with GRPO on `questions`.

    The run, its scratch folder and the atomic save are corpus.train.trainers' (as for SFT
    and DPO): the final model, its tokenizer and training.json land in `out_dir` whole or
    not at all. The PhaseResult's log_history holds LOGGED per step.
    """
    from trl import GRPOTrainer

    # accelerate launch sets WORLD_SIZE; a plain run is one process.
    settings.check_batch(int(os.environ.get("WORLD_SIZE", "1")))
    dataset = grpo_dataset(questions)

    def factory(scratch: Path):
        model, tokenizer = load_model(Path(model_dir), profile)
        return GRPOTrainer(model=model, reward_funcs=[correct_answer_reward],
                           args=_grpo_config(settings, scratch, seed=seed, profile=profile),
                           train_dataset=dataset, processing_class=tokenizer)

    fitted = FittedRecords(rows=list(dataset), truncated=0, over_budget=0)
    provenance = {"phase": "grpo", "settings": asdict(settings), "seed": seed, **(provenance or {})}
    return run_phase("grpo", factory, Path(model_dir), Path(out_dir), fitted, len(questions), provenance,
                     logged=LOGGED)


def train_grpo(model_dir: Path, questions: list[dict], out_dir: Path, settings: GRPOSettings, *, seed: int,
               profile: ResolvedProfile = CPU_PROFILE, provenance: dict | None = None) -> dict:
    """grpo_phase, summarised: steps, final_loss, reward_first / reward_last (the first and
    last logged mean rewards), seconds, and log_history (one dict per logged step: step,
    loss, reward, reward_std, frac_reward_zero_std, completion_length, learning_rate, kl)."""
    result = grpo_phase(model_dir, questions, out_dir, settings, seed=seed, profile=profile, provenance=provenance)
    rewards = [row["reward"] for row in result.log_history if row.get("reward") is not None]
    summary = {
        "method": "grpo",
        "model": str(model_dir),
        "questions": len(questions),
        "questions_per_step": settings.questions_per_step(int(os.environ.get("WORLD_SIZE", "1"))),
        "steps": result.steps,
        "final_loss": result.final_loss,
        "reward_first": rewards[0] if rewards else None,
        "reward_last": rewards[-1] if rewards else None,
        "seconds": round(result.seconds, 3),
        "settings": asdict(settings),
        "seed": seed,
        "log_history": result.log_history,
    }
    log.info("GRPO: %d steps in %.1f s, reward %s -> %s, saved to %s", result.steps, result.seconds,
             summary["reward_first"], summary["reward_last"], out_dir)
    return summary
