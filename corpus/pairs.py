"""SFT records and DPO pairs from a round's samples, in TRL's conversational formats.

- SFT (prompt-completion): every correct rationale with an explicit answer:
  first-pass correct samples, and regenerated (hinted) ones that reached the
  gold answer without leaking the hint. The prompt is always the plain
  question prompt, never the hinted one: the hint is scaffolding for making
  the data, not something the trained model will see.
- DPO (preference): for a question with at least one correct and one
  incorrect rationale, chosen = correct, rejected = incorrect; distinct texts
  only; at most `max_per_question` pairs, chosen by a hash order of the pair
  (deterministic, independent of row order).

Both are sorted by id. A contamination guard refuses to write anything when
a val or test question, or a val/test patient, appears.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass

import polars as pl

from corpus.errors import CorpusError
from corpus.generate.prompts import PromptTemplate, question_messages
from corpus.hashing import content_id
from corpus.questions.question_sets import patient_key

# A chosen / SFT text must state its answer: a log-prob guess is no rationale to learn from.
EXPLICIT = ("boxed", "statement")
PERCENTILES = (5, 25, 50, 75, 95)


class ContaminationError(CorpusError):
    """Evaluation questions or patients leaked into training data."""


@dataclass(frozen=True)
class PairsConfig:
    max_per_question: int = 4


def _assistant(text: str) -> list[dict]:
    return [{"role": "assistant", "content": text}]


def _prompt(question: dict, template: PromptTemplate) -> list[dict]:
    return question_messages(question, template)


def sft_records(candidates: pl.DataFrame, questions: dict[str, dict], template: PromptTemplate) -> list[dict]:
    """One record per distinct correct text of a question."""
    records = {}
    usable = candidates.filter(pl.col("correct") & pl.col("parse_status").is_in(EXPLICIT)
                               & (pl.col("text").str.strip_chars() != ""))
    for row in usable.sort("id").iter_rows(named=True):
        question = questions[row["question_id"]]
        content = {"question_id": row["question_id"], "prompt": _prompt(question, template),
                   "completion": _assistant(row["text"])}
        record_id = content_id(content)
        records.setdefault(record_id, {"id": record_id, **content})
    return sorted(records.values(), key=lambda r: r["id"])


def _pair_order(chosen_id: str, rejected_id: str) -> str:
    return hashlib.sha256(f"{chosen_id}:{rejected_id}".encode()).hexdigest()


def dpo_records(
    chosen_pool: pl.DataFrame, rejected_pool: pl.DataFrame, questions: dict[str, dict], template: PromptTemplate,
    config: PairsConfig,
) -> list[dict]:
    chosen_ok = chosen_pool.filter(pl.col("correct") & pl.col("parse_status").is_in(EXPLICIT)
                                   & (pl.col("text").str.strip_chars() != ""))
    rejected_ok = rejected_pool.filter(~pl.col("correct") & (pl.col("text").str.strip_chars() != ""))
    chosen_by_q = {k[0]: v.unique("text", keep="first").sort("id") for k, v in chosen_ok.sort("id").group_by("question_id")}
    rejected_by_q = {k[0]: v.unique("text", keep="first").sort("id") for k, v in rejected_ok.sort("id").group_by("question_id")}
    records = []
    for question_id in sorted(set(chosen_by_q) & set(rejected_by_q)):
        pairs = [
            (c, r)
            for c in chosen_by_q[question_id].iter_rows(named=True)
            for r in rejected_by_q[question_id].iter_rows(named=True)
            if c["text"] != r["text"]
        ]
        pairs.sort(key=lambda pair: _pair_order(pair[0]["id"], pair[1]["id"]))
        question = questions[question_id]
        for chosen, rejected in pairs[: config.max_per_question]:
            content = {"question_id": question_id, "prompt": _prompt(question, template),
                       "chosen": _assistant(chosen["text"]), "rejected": _assistant(rejected["text"])}
            records.append({"id": content_id(content), **content})
    return sorted(records, key=lambda r: r["id"])


def guard_contamination(records: Iterable[dict], train_questions: dict[str, dict], held_out: pl.DataFrame,
                        what: str) -> None:
    """Stop if a training record uses a val/test question, or a question of a val/test patient."""
    held_ids = set(held_out["id"].to_list())
    held_patients = {patient_key(q) for q in held_out.select("task", "subject_id").to_dicts()}
    bad = []
    for record in records:
        question_id = record["question_id"]
        question = train_questions.get(question_id)
        if question_id in held_ids:
            bad.append(f"{record['id']} (question {question_id} is in val/test)")
        elif question is None:
            bad.append(f"{record['id']} (question {question_id} is not a train question)")
        elif patient_key(question) in held_patients:
            bad.append(f"{record['id']} (patient {patient_key(question)} is in val/test)")
    if bad:
        shown = "; ".join(bad[:5])
        raise ContaminationError(f"{what}: {len(bad)} record(s) touch evaluation data, e.g. {shown}")


def _percentiles(lengths: list[int]) -> dict:
    if not lengths:
        return {}
    series = pl.Series(lengths)
    return {f"p{p}": int(series.quantile(p / 100, "nearest")) for p in PERCENTILES}


def pairs_stats(sft: list[dict], dpo: list[dict], questions: dict[str, dict], samples: pl.DataFrame,
                regenerated: pl.DataFrame, hard_ids: set[str]) -> dict:
    def by_task_label(records: list[dict]) -> dict:
        counts: dict = {}
        for record in records:
            question = questions[record["question_id"]]
            label = question["answer"].split(". ", 1)[0]
            counts.setdefault(question["task"], {}).setdefault(label, 0)
            counts[question["task"]][label] += 1
        return {task: dict(sorted(labels.items())) for task, labels in sorted(counts.items())}

    kept = regenerated.filter(pl.col("filter_reason").is_null()) if regenerated.height else regenerated
    regenerated_questions = kept["question_id"].n_unique() if kept.height else 0
    reasons = (
        dict(sorted((str(r), int(n)) for r, n in regenerated.group_by("filter_reason").len().iter_rows() if r))
        if regenerated.height else {}
    )
    leak_rules = (
        dict(sorted((str(r), int(n)) for r, n in regenerated.filter(pl.col("leaked")).group_by("leak_rule").len().iter_rows()))
        if regenerated.height else {}
    )
    return {
        "sft": {"records": len(sft), "by_task_label": by_task_label(sft)},
        "dpo": {"pairs": len(dpo), "questions": len({r["question_id"] for r in dpo}), "by_task_label": by_task_label(dpo)},
        "samples": samples.height,
        "hard_questions": len(hard_ids),
        "regeneration": {
            "samples": regenerated.height,
            "kept": kept.height,
            "yield": round(kept.height / regenerated.height, 4) if regenerated.height else 0.0,
            "hard_questions_recovered": regenerated_questions,
            "dropped_by_reason": reasons,
            "leak_drops_by_rule": leak_rules,
        },
        "length_chars": {
            "sft_completion": _percentiles([len(r["completion"][0]["content"]) for r in sft]),
            "chosen": _percentiles([len(r["chosen"][0]["content"]) for r in dpo]),
            "rejected": _percentiles([len(r["rejected"][0]["content"]) for r in dpo]),
        },
    }
