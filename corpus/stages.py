"""What each DVC stage does, given params.yaml: shared by stages/*.py and the CLI."""

from __future__ import annotations

import logging
from pathlib import Path

from corpus import cohorts as cohorts_mod
from corpus.config import (
    cohort_config,
    duckdb_config,
    load_params,
    masked_value_config,
    mimic_config,
    questions_config,
    registry_config,
)
from corpus.atomic import atomic_path, write_json
from corpus.ingest.mimic import ingest_mimic

log = logging.getLogger(__name__)

WAREHOUSE = Path("data/warehouse")
MIMIC_WAREHOUSE = WAREHOUSE / "mimic"
INGEST_REPORT = WAREHOUSE / "ingest_report.json"
COHORTS = Path("data/cohorts")
COHORTS_SUMMARY = Path("metrics/cohorts.json")
REGISTRY = WAREHOUSE / "registry.parquet"
REGISTRY_SUMMARY = Path("metrics/registry.json")
QUESTIONS = Path("data/questions")
QUESTIONS_SUMMARY = Path("metrics/questions.json")


def run_ingest(params_path: Path = Path("params.yaml")) -> dict:
    params = load_params(params_path)
    mimic = mimic_config(params)
    report = ingest_mimic(
        source=mimic.source,
        table_spec=mimic.table_spec,
        out=MIMIC_WAREHOUSE,
        report_path=INGEST_REPORT,
        db=duckdb_config(params),
        progress=lambda table: log.info("ingest %s", table),
    )
    for table, entry in report["tables"].items():
        if entry["rows_excluded"]:
            log.warning("%s: %d row(s) excluded: %s", table, entry["rows_excluded"], entry["excluded"])
    return report


def run_cohorts(params_path: Path = Path("params.yaml")) -> dict:
    params = load_params(params_path)
    summary = cohorts_mod.build_cohorts(
        warehouse=MIMIC_WAREHOUSE,
        out=COHORTS,
        summary_path=COHORTS_SUMMARY,
        config=cohort_config(params), db=duckdb_config(params)
    )
    for task, entry in summary["tasks"].items():
        log.info("cohort %s: %d samples, labels %s", task, entry["samples"], entry["by_label"])
    return summary


def run_registry(params_path: Path = Path("params.yaml")) -> dict:
    """registry.source is either the sepsis challenge folder (hourly .psv files, summarised
    per stay) or any registry table (.csv, .csv.gz, .parquet; one row per patient) that
    registry.spec describes, checked and copied as typed parquet."""
    from corpus.registry.build import build_sepsis_registry, load_registry

    params = load_params(params_path)
    registry = registry_config(params)
    if registry.source.is_file():
        table = load_registry(registry.source, registry.spec)
        with atomic_path(REGISTRY) as tmp:
            table.write_parquet(tmp, compression="zstd")
        summary = {"source_files": 1, "rows": table.height, "columns": table.width}
        log.info("registry: %d rows from %s", table.height, registry.source)
    else:
        summary = build_sepsis_registry(
            registry.source, registry.spec, REGISTRY, registry.window_hours, duckdb_config(params)
        )
        log.info("registry: %d stays, %d with sepsis", summary["stays"], summary["sepsis_stays"])
    write_json(REGISTRY_SUMMARY, summary)
    return summary


def _registry_questions(params: dict) -> list[dict]:
    from corpus.questions.masked_value import build_masked_value_questions
    from corpus.registry.build import load_registry
    from corpus.registry.spec import load_registry_spec

    config = masked_value_config(params)
    if config is None:
        return []
    registry = registry_config(params)
    return build_masked_value_questions(
        load_registry(REGISTRY, registry.spec),
        load_registry_spec(registry.spec),
        config,
        note_values={"window_hours": registry.window_hours},
    )


def run_questions(params_path: Path = Path("params.yaml")) -> dict:
    from corpus.questions.mimic import build_mimic_questions
    from corpus.questions.question_sets import publish_question_sets
    from corpus.stats import question_stats

    params = load_params(params_path)
    config = questions_config(params)
    questions = build_mimic_questions(COHORTS, config.policies, cohort_config(params), config.seed, config.wording)
    questions += _registry_questions(params)
    frame = publish_question_sets(questions, config.policies, config.split_fractions, config.seed, QUESTIONS)
    summary = question_stats(frame)
    write_json(QUESTIONS_SUMMARY, summary)
    log.info("questions: %s", summary["by_split"])
    return summary
