"""Counts and length percentiles of a question set, and a bar chart of them."""

from __future__ import annotations

from pathlib import Path

import polars as pl

from corpus.atomic import atomic_path
from corpus.errors import SourceError

PERCENTILES = (5, 25, 50, 75, 95)


def read_question_sets(folder: Path) -> pl.DataFrame:
    files = sorted(Path(folder).glob("*.parquet"))
    if not files:
        raise SourceError(f"{folder}: no question files (*.parquet) found")
    return pl.concat([pl.read_parquet(f) for f in files])


def question_stats(frame: pl.DataFrame) -> dict:
    """Counts per task, split and answer; context length percentiles (characters) per task.

    Lettered answers count by letter ("B"), so option position balance shows
    even where each question has its own option texts (masked_value ranges).
    """
    frame = frame.with_columns(
        pl.when(pl.col("answer").str.contains(r"^[A-J]\. "))
        .then(pl.col("answer").str.slice(0, 1))
        .otherwise(pl.col("answer"))
        .alias("answer_key")
    )
    def nested(keys: list[str]) -> dict:
        out: dict = {}
        for row in frame.group_by(keys).len().sort(keys).iter_rows():
            node = out
            for key in row[:-2]:
                node = node.setdefault(str(key), {})
            node[str(row[-2])] = int(row[-1])
        return out

    lengths = {}
    for task, part in frame.with_columns(pl.col("context").str.len_chars().alias("n")).group_by("task"):
        values = part["n"]
        lengths[str(task[0])] = {f"p{p}": float(values.quantile(p / 100, "nearest")) for p in PERCENTILES}
    return {
        "questions": frame.height,
        "patients": frame["subject_id"].n_unique(),
        "by_task": nested(["task"]),
        "by_split": nested(["split"]),
        "by_task_split": nested(["task", "split"]),
        "by_task_answer": nested(["task", "answer_key"]),
        "context_chars": dict(sorted(lengths.items())),
    }


def plot_question_counts(frame: pl.DataFrame, target: Path) -> None:
    """Bar chart: questions per task, stacked by split; written atomically as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    counts = frame.group_by("task", "split").len().sort("task", "split")
    tasks = sorted(counts["task"].unique().to_list())
    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    bottom = [0] * len(tasks)
    for split in ("train", "val", "test"):
        part = {r["task"]: r["len"] for r in counts.filter(pl.col("split") == split).iter_rows(named=True)}
        heights = [part.get(t, 0) for t in tasks]
        ax.bar(tasks, heights, bottom=bottom, label=split)
        bottom = [b + h for b, h in zip(bottom, heights)]
    ax.set_ylabel("questions")
    ax.set_title("Questions per task and split")
    ax.legend()
    fig.tight_layout()
    with atomic_path(target) as tmp:
        fig.savefig(tmp, format="png", metadata={"Software": None})
    plt.close(fig)
