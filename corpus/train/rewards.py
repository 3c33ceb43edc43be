"""Verifiable rewards for RLVR (GRPO): 1 for a correct answer, 0 otherwise (C-Reason, EHRMIND).

The reward reads the answer exactly as sampling scores a sample
(corpus/generate/sampling.py: ``parsed.predicted == question["answer"]``), with
the project's own parser, so "correct" means the same thing in the samples, the
pair files, evaluation and RL. One difference, on purpose: no log-probability
fallback. Sampling falls back to the option the model scores highest when a text
has no readable answer (C-Reason's fallback for measuring accuracy); rewarding
that would pay a policy for writing no answer at all whenever its option scores
happen to favour the gold one. A reward must be earned by a stated answer, so
``unparsed``, ``invalid`` and ``conflict`` texts get 0.

The function is pure: no logging, no state, one float per completion.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from corpus.generate.parse import parse_answer

__all__ = ["completion_text", "correct_answer_reward"]


def completion_text(completion: str | Sequence[dict[str, Any]]) -> str:
    """The generated text of one completion, in either of TRL's forms.

    Conversational completions are lists of messages ({"role", "content"}); a
    model's reply is the assistant turn(s), so their contents are joined. Plain
    (standard-format) completions are strings.
    """
    if isinstance(completion, str):
        return completion
    parts = [message.get("content") or "" for message in completion if message.get("role", "assistant") == "assistant"]
    return "\n".join(part if isinstance(part, str) else str(part) for part in parts)


def correct_answer_reward(
    completions: Sequence[str | Sequence[dict[str, Any]]],
    answer: Sequence[str],
    options: Sequence[Sequence[str]],
    **kwargs: Any,
) -> list[float]:
    """TRL reward function: 1.0 where the parsed answer is the gold option, else 0.0.

    `answer` and `options` are dataset columns, repeated by GRPOTrainer once per
    generation, so all three sequences line up. `answer` is an element of
    `options` (corpus/questions/record.py), and `parse_answer` returns exactly
    one element of the options or None, so equality is the whole check. Other
    keyword arguments TRL passes (prompts, completion_ids, trainer_state,
    log_metric, the dataset's other columns) are accepted and ignored.
    """
    if not len(completions) == len(answer) == len(options):
        raise ValueError(
            f"correct_answer_reward: {len(completions)} completions, {len(answer)} answers and "
            f"{len(options)} option lists; expected one answer and one option list per completion"
        )
    rewards = []
    for completion, gold, choices in zip(completions, answer, options):
        parsed = parse_answer(completion_text(completion), list(choices))
        rewards.append(1.0 if parsed.predicted is not None and parsed.predicted == gold else 0.0)
    return rewards
