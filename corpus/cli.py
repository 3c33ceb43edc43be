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


def main() -> None:  # pragma: no cover - console entry
    app()
