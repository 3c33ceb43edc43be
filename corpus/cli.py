"""The `corpus` command: run pipeline stages by hand and inspect their artifacts.

`dvc repro` runs the same stages from dvc.yaml; these commands are for a
single stage, a quick look, or a run outside DVC.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import typer

from corpus.errors import CorpusError
from corpus.logs import console, setup_logging

app = typer.Typer(
    name="corpus",
    help="Versioned dataset builder for clinical-reasoning corpora (ReMedi / iReMedi, C-Reason).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

ParamsOption = typer.Option(Path("params.yaml"), "--params", help="Parameters file (DVC params.yaml).")


def _run(step):
    setup_logging()
    try:
        return step()
    except CorpusError as exc:
        logging.getLogger("corpus").error("%s", exc)
        raise typer.Exit(1) from None


@app.command()
def ingest(params: Path = ParamsOption) -> None:
    """Read the MIMIC-IV source into typed, checked parquet (stage `ingest`)."""
    from corpus.stages import INGEST_REPORT, run_ingest

    report = _run(lambda: run_ingest(params))
    console.print(f"wrote data/warehouse/mimic/ and {INGEST_REPORT}: {report['rows_excluded_total']} row(s) excluded")


@app.command()
def cohorts(params: Path = ParamsOption) -> None:
    """Build one row per prediction sample and label, per task (stage `cohorts`)."""
    from corpus.stages import run_cohorts

    summary = _run(lambda: run_cohorts(params))
    console.print_json(json.dumps(summary))


@app.command()
def questions(params: Path = ParamsOption) -> None:
    """Turn cohorts and registry rows into validated, patient-split question sets (stage `questions`)."""
    from corpus.stages import run_questions

    summary = _run(lambda: run_questions(params))
    console.print_json(json.dumps(summary["by_task_split"]))


@app.command()
def stats(
    folder: Path = typer.Argument(Path("data/questions"), help="Folder of question parquet files."),
    plot: Path = typer.Option(Path("plots/questions.png"), help="Where to write the bar chart (PNG)."),
    as_json: bool = typer.Option(False, "--json", help="Print the figures as JSON instead of tables."),
) -> None:
    """Print counts per task, split and answer and context-length percentiles; write a bar chart."""
    from rich.table import Table

    from corpus.stats import plot_question_counts, question_stats, read_question_sets

    frame = _run(lambda: read_question_sets(folder))
    figures = question_stats(frame)
    plot_question_counts(frame, plot)
    if as_json:
        typer.echo(json.dumps(figures, indent=2, sort_keys=True))
        return
    splits = ("train", "val", "test")
    table = Table(title=f"{figures['questions']} questions, {figures['patients']} patients ({folder})")
    table.add_column("task")
    for split in splits:
        table.add_column(split, justify="right")
    table.add_column("answers")
    for task, by_split in figures["by_task_split"].items():
        answers = ", ".join(f"{a}: {n}" for a, n in figures["by_task_answer"][task].items())
        table.add_row(task, *(str(by_split.get(s, 0)) for s in splits), answers)
    console.print(table)
    lengths = Table(title="context length (characters)")
    lengths.add_column("task")
    for name in next(iter(figures["context_chars"].values()), {}):
        lengths.add_column(name, justify="right")
    for task, values in figures["context_chars"].items():
        lengths.add_row(task, *(f"{v:.0f}" for v in values.values()))
    console.print(lengths)
    console.print(f"bar chart: {plot}")


def main() -> None:  # pragma: no cover - console entry
    app()
