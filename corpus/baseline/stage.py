"""The baseline stage: question files in, every task scored with corpus.scoring, three outputs written."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable

import polars as pl
from threadpoolctl import threadpool_limits

from corpus.atomic import atomic_path
from corpus.baseline import MIMIC_TASKS, REGISTRY_TASK, BaselineConfig, baseline_config
from corpus.baseline.mimic import mimic_features, mimic_task
from corpus.baseline.registry import rebuild_questions, registry_task
from corpus.errors import ConfigError, SourceError
from corpus.scoring import classification_metrics, task_labels
from corpus.stats import write_stage_figures

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
# Headline figures copied from the test split's scores into metrics/baseline.json.
HEADLINE = ("accuracy", "macro_f1", "tpr", "tnr")

METRICS = Path("metrics/baseline.json")
DETAILS = Path("metrics/details/baseline.json")
PREDICTIONS = Path("data/baseline/predictions.parquet")


def read_questions(folder: Path) -> pl.DataFrame:
    """All question records with their split, sorted by id; each file must hold only its own split."""
    frames = []
    for split in SPLITS:
        path = Path(folder) / f"{split}.parquet"
        if not path.exists():
            raise SourceError(f"{path}: question file not found (run the questions stage first)")
        frame = pl.read_parquet(path, columns=["id", "task", "subject_id", "hadm_id", "split", "options", "answer"])
        wrong = frame.filter(pl.col("split") != split)
        if wrong.height:
            raise SourceError(f"{path}: column split holds {wrong['split'][0]!r} for question {wrong['id'][0]}, expected {split!r}")
        frames.append(frame)
    return pl.concat(frames).sort("id")


def labels_of(task: str, questions: pl.DataFrame) -> tuple[list[str], str | None]:
    """The task's labels; every question of the task must give the same ones."""
    seen = {tuple(o) for o in questions["options"].to_list()}
    sets = {tuple(task_labels(task, list(options))[0]) for options in seen}
    if len(sets) != 1:
        raise SourceError(f"data/questions: task {task} questions have differing label sets {sorted(sets)}")
    return task_labels(task, list(next(iter(seen))))


def score_task(task: str, frame: pl.DataFrame, result: dict) -> dict:
    """Per predictor (model, majority) and split: classification_metrics of the chosen options."""
    labels, positive = labels_of(task, frame)
    scores: dict = {}
    for predictor in ("model", "majority"):
        if predictor == "model" and "skipped" in result:
            continue
        predicted = pl.Series(predictor, result[predictor], dtype=pl.String)
        scored = frame.select("split", "answer").with_columns(predicted)
        scores[predictor] = {
            split: classification_metrics(part["answer"].to_list(), part[predictor].to_list(), labels, positive)
            for split in SPLITS
            for part in [scored.filter(pl.col("split") == split)]
        }
    return scores


def headline(task_details: dict) -> dict:
    """The small per-task entry of metrics/baseline.json."""
    entry = {"n_train": task_details["n_train"], "n_test": task_details["majority"]["test"]["n"],
             "majority_accuracy": task_details["majority"]["test"]["accuracy"]}
    if "skipped" in task_details:
        return {**entry, "skipped": task_details["skipped"]}
    test = task_details["model"]["test"]
    return {**entry, **{key: test[key] for key in HEADLINE if key in test}}


def build_baseline(questions: pl.DataFrame, mimic: Callable[[pl.DataFrame], pl.DataFrame] | None,
                   registry: Callable[[pl.DataFrame], dict] | None, config: BaselineConfig):
    """(metrics, details, predictions) for every task present in `questions`.

    `mimic(task_questions)` gives a MIMIC task's feature frame (mimic_features);
    `registry(task_questions)` runs the masked-value models (registry_task).
    """
    details: dict = {}
    predictions = []
    for task in sorted(set(questions["task"].to_list())):
        frame = questions.filter(pl.col("task") == task).sort("id")
        if task in MIMIC_TASKS and mimic is not None:
            features = mimic(frame)
            result = mimic_task(features, labels_of(task, frame)[0], config)
        elif task == REGISTRY_TASK and registry is not None:
            result = registry(frame)
        else:
            log.warning("baseline: no tabular model for task %s; left out", task)
            continue
        extra = {k: v for k, v in result.items() if k not in ("model", "majority")}
        details[task] = {**extra, **score_task(task, frame, result)}
        predictions.append(frame.select("id", "task", "split", "answer").with_columns(
            pl.Series("predicted", result["model"], dtype=pl.String),
            pl.Series("majority", result["majority"], dtype=pl.String)))
        figures = details[task].get("model", details[task]["majority"])["test"]
        log.info("baseline %s: n_train %d, test n %d, accuracy %s, macro-F1 %s%s", task, result["n_train"],
                 figures["n"], figures["accuracy"], figures["macro_f1"],
                 f" (skipped: {result['skipped']})" if "skipped" in result else "")
    metrics = {task: headline(entry) for task, entry in details.items()}
    frame = pl.concat(predictions).sort("id") if predictions else pl.DataFrame(
        schema={"id": pl.String, "task": pl.String, "split": pl.String, "answer": pl.String,
                "predicted": pl.String, "majority": pl.String})
    return metrics, details, frame


def baseline_from_files(params: dict, questions_dir: Path, cohorts_dir: Path, warehouse: Path,
                        registry_path: Path) -> tuple[dict, dict, pl.DataFrame]:
    """(metrics, details, predictions) from the pipeline's artifacts at these paths, under `params`."""
    from corpus.config import duckdb_config, masked_value_config, registry_config

    config = baseline_config(params)
    db = duckdb_config(params)
    questions = read_questions(questions_dir)

    def registry(frame: pl.DataFrame) -> dict:
        from corpus.registry.build import load_registry
        from corpus.registry.spec import load_registry_spec

        mv_config = masked_value_config(params)
        if mv_config is None:
            raise ConfigError(f"params.yaml masked_value: missing, but {questions_dir} holds masked_value questions")
        settings = registry_config(params)
        table, spec = load_registry(registry_path, settings.spec), load_registry_spec(settings.spec)
        built = rebuild_questions(frame, table, spec, mv_config, {"window_hours": settings.window_hours})
        return registry_task(frame, table, spec, built, mv_config.show_outcomes, config)

    # One BLAS thread: these problems are tiny, and OpenBLAS threads on a busy 2-core host spin-wait
    # (an lbfgs fit on 3,000 x 80 took 1.1 s with two threads, 0.04 s with one).
    with threadpool_limits(1):
        return build_baseline(questions, lambda frame: mimic_features(frame, cohorts_dir, warehouse, db), registry,
                              config)


def summary_metrics(metrics: dict) -> dict:
    """The DVC metric: the same two headline keys as the LLM evaluations (metrics/base.json),
    over the fitted tasks: accuracy weighted by test questions, macro-F1 averaged over tasks.
    The per-task entries stay in the details file ("headline")."""
    fitted = [entry for entry in metrics.values() if "accuracy" in entry and entry.get("n_test")]
    if not fitted:
        return {"accuracy": None, "macro_f1": None}
    n = sum(entry["n_test"] for entry in fitted)
    return {"accuracy": round(sum(entry["accuracy"] * entry["n_test"] for entry in fitted) / n, 4),
            "macro_f1": round(sum(entry["macro_f1"] for entry in fitted) / len(fitted), 4)}


def write_outputs(metrics: dict, details: dict, predictions: pl.DataFrame, metrics_path: Path = METRICS,
                  details_path: Path = DETAILS, predictions_path: Path = PREDICTIONS) -> None:
    with atomic_path(predictions_path) as tmp:
        predictions.write_parquet(tmp, compression="zstd")
    # Each task's small headline sits in its details entry; the metric file sums them up.
    write_stage_figures(metrics_path, summary_metrics(metrics), details_path,
                        {task: {**entry, "headline": metrics[task]} if task in metrics else entry
                         for task, entry in details.items()})


def run_baseline(params_path: Path = Path("params.yaml")) -> dict:
    """The DVC stage: read params and the pipeline's artifacts, write the three outputs; returns the metrics."""
    from corpus.config import load_params
    from corpus.stages import COHORTS, MIMIC_WAREHOUSE, QUESTIONS, REGISTRY

    metrics, details, predictions = baseline_from_files(load_params(params_path), QUESTIONS, COHORTS,
                                                        MIMIC_WAREHOUSE, REGISTRY)
    write_outputs(metrics, details, predictions)
    return metrics
