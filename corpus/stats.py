"""Counts and length percentiles of a question set, and a bar chart of them; and,
for the data stages, what goes where:

- the DVC metrics file: the few headline figures a user compares between runs
  (`dvc metrics show` / `diff`: counts per task and split, label balance,
  accuracy per task), from `*_metrics`;
- the details JSON beside it (metrics/details/): every statistic the stage
  computed (per-label and per-answer counts, percentiles, fingerprints);
- plot data (metrics/plots/, CSV), rendered by `dvc plots show` as dvc.yaml
  declares them, from `*_plot_rows`.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

import polars as pl

from corpus.atomic import atomic_path, write_json
from corpus.errors import SourceError

PERCENTILES = (5, 25, 50, 75, 95)
# The context-length plot's x axis: every 5th percentile, 0 (shortest) to 100 (longest).
PLOT_PERCENTILES = tuple(range(0, 101, 5))
# Its series, one column each, always written (dvc plots refuses a plot with a missing
# field): the question tasks this pipeline builds. An absent task's cells stay empty.
PLOT_TASKS = ("los", "masked_value", "mortality", "readmission")


def write_csv(target: Path, rows: list[dict], columns: list[str]) -> None:
    """Rows as CSV with a header, written atomically (None -> empty cell)."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    with atomic_path(target) as tmp:
        tmp.write_text(buffer.getvalue(), encoding="utf-8")


def cohort_metrics(summary: dict) -> dict:
    """Samples per task and label balance: the share of the task's rarest label
    (1/classes when balanced; the positive rate of a binary task with few positives)."""
    tasks = {}
    for task, entry in summary["tasks"].items():
        counts = entry["by_label"].values()
        share = min(counts) / entry["samples"] if entry["samples"] else 0.0
        tasks[task] = {"samples": entry["samples"], "rarest_label_share": round(share, 4)}
    return {"tasks": tasks}


def registry_metrics(summary: dict) -> dict:
    """Rows (stays) and, for the sepsis registry, stays with sepsis."""
    return {key: summary[key] for key in ("rows", "stays", "sepsis_stays") if key in summary}


def question_metrics(stats: dict) -> dict:
    """Questions per task and per split (the full task x split table is in the details and the plot)."""
    return {"by_task": stats["by_task"], "by_split": stats["by_split"]}


def question_plot_rows(frame: pl.DataFrame) -> dict[str, tuple[list[dict], list[str]]]:
    """{plot file name: (rows, columns)}: questions per task and split (one bar each), and
    context length (characters) at every 5th percentile, one column per task."""
    counts = [
        {"task_split": f"{task} / {split}", "task": task, "split": split, "questions": int(n)}
        for task, split, n in frame.group_by("task", "split").len().sort("task", "split").iter_rows()
    ]
    lengths = frame.select("task", pl.col("context").str.len_chars().alias("chars"))
    by_task = {task: lengths.filter(pl.col("task") == task)["chars"] for task in PLOT_TASKS}
    percentiles = [
        {"percentile": p, **{task: int(values.quantile(p / 100, "nearest")) if values.len() else None
                             for task, values in by_task.items()}}
        for p in PLOT_PERCENTILES
    ]
    return {
        "questions_by_task_split.csv": (counts, ["task_split", "task", "split", "questions"]),
        "context_chars.csv": (percentiles, ["percentile", *PLOT_TASKS]),
    }


def sample_metrics(stats: dict) -> dict:
    """Accuracy, overall and per task (sample_stats has the rest)."""
    return {"accuracy": stats["accuracy"],
            "by_task": {task: {"accuracy": entry["accuracy"]} for task, entry in stats["by_task"].items()}}


def sample_plot_rows(stats: dict) -> tuple[list[dict], list[str]]:
    """One bar per task: its sample accuracy."""
    rows = [{"task": task, "accuracy": entry["accuracy"], "samples": entry["samples"]}
            for task, entry in stats["by_task"].items()]
    return rows, ["task", "accuracy", "samples"]


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


def write_stage_figures(metrics_path: Path, metrics: dict, details_path: Path, details: dict,
                        plots: dict[Path, tuple[list[dict], list[str]]] | None = None) -> None:
    """A stage's details JSON and plot data, then its DVC metrics file: last, so that it
    exists only when what it summarises does (each file is written atomically)."""
    write_json(details_path, details)
    for path, (rows, columns) in (plots or {}).items():
        write_csv(path, rows, columns)
    write_json(metrics_path, metrics)
