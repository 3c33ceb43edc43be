"""Question sets: split by patient, checked against their data contract, written per split."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from corpus.atomic import atomic_dir
from corpus.questions.record import QUESTION_FIELDS
from corpus.questions.sampling import SamplingPolicy
from corpus.questions.split import SPLITS, split_patients
from corpus.validate import require_valid

QUESTION_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("task", pa.string()),
        ("subject_id", pa.int64()),
        ("hadm_id", pa.int64()),
        ("split", pa.string()),
        ("context", pa.string()),
        ("question", pa.string()),
        ("options", pa.list_(pa.string())),
        ("answer", pa.string()),
        ("label_convention", pa.string()),
        ("template_hash", pa.string()),
    ]
)


def patient_key(question: dict) -> str:
    """Patients of different sources never share a key (MIMIC subject 1 is not registry record 1)."""
    source = "registry" if question["task"] == "masked_value" else "mimic"
    return f"{source}:{question['subject_id']}"


def assign_splits(questions: list[dict], fractions, seed: int) -> pl.DataFrame:
    """All questions as one frame, sorted by id, each with the split of its patient.

    Each source is split on its own, so adding registry questions never moves a
    MIMIC patient to another split (and the fractions hold within each source).
    """
    assignment: dict[str, str] = {}
    keys = {patient_key(q) for q in questions}
    for source in sorted({key.split(":", 1)[0] for key in keys}):
        assignment.update(split_patients((k for k in keys if k.startswith(source + ":")), fractions, seed))
    # Built column by column in id order: tens of thousands of long contexts would
    # otherwise be copied into one dict per row first.
    order = sorted(range(len(questions)), key=lambda i: questions[i]["id"])
    columns = {}
    for field in QUESTION_FIELDS:
        if field == "split":
            values = [assignment[patient_key(questions[i])] for i in order]
        else:
            values = [questions[i][field] for i in order]
        columns[field] = pa.array(values, type=QUESTION_SCHEMA.field(field).type)
    return pl.from_arrow(pa.table(columns, schema=QUESTION_SCHEMA))


def _with_contract_columns(frame: pl.DataFrame, policies: dict[str, SamplingPolicy]) -> pl.DataFrame:
    return frame.with_columns(
        pl.col("options").list.contains(pl.col("answer")).alias("answer_in_options"),
        pl.col("options").list.len().alias("n_options"),
        pl.col("task").replace_strict({t: p.policy for t, p in policies.items()}, default="natural").alias("policy"),
    )


def balance_table(frame: pl.DataFrame, policies: dict[str, SamplingPolicy]) -> pl.DataFrame:
    """One row per (task, answer): count, the policy's cap and, for `balanced`, the class target."""
    counts = frame.group_by("task", "answer").len("count").sort("task", "answer")
    rows = []
    for row in counts.iter_rows(named=True):
        policy = policies.get(row["task"], SamplingPolicy())
        task_rows = counts.filter(pl.col("task") == row["task"])
        rows.append(
            {
                **row,
                "policy": policy.policy,
                "max_per_class": policy.max_per_class or int(task_rows["count"].sum()),
                "class_target": int(task_rows["count"].max()),
            }
        )
    return pl.DataFrame(rows)


def validate_question_sets(frame: pl.DataFrame, policies: dict[str, SamplingPolicy]) -> None:
    require_valid(_with_contract_columns(frame, policies), "questions", "question sets")
    require_valid(balance_table(frame, policies), "question_balance", "question label balance", id_column="task")


def write_question_sets(frame: pl.DataFrame, out: Path) -> dict[str, int]:
    """data/questions/{train,val,test}.parquet, each sorted by id; swapped in only when all are written."""
    counts = {}
    with atomic_dir(out) as staging:
        for split in SPLITS:
            part = frame.filter(pl.col("split") == split).sort("id")
            pq.write_table(part.to_arrow().cast(QUESTION_SCHEMA), staging / f"{split}.parquet", compression="zstd")
            counts[split] = part.height
    return counts


def publish_question_sets(questions: list[dict], policies: dict[str, SamplingPolicy], fractions, seed: int,
                          out: Path) -> pl.DataFrame:
    """Split, validate, then write: a set that breaks its contract is never written."""
    frame = assign_splits(questions, fractions, seed)
    validate_question_sets(frame, policies)
    write_question_sets(frame, out)
    return frame
