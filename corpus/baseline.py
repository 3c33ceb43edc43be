"""The `baseline` stage: a scikit-learn tabular reference per task, on the questions' own splits.

What an LLM's figures in metrics/round-<r>.json should be read against. Every
figure comes from `corpus.scoring.classification_metrics`, on the same
question records (data/questions/{train,val,test}.parquet) the LLM answers.

MIMIC tasks (mortality, readmission, los): logistic regression on a bag of
codes of the visits in the question's context (ICD diagnoses and procedures,
drug names; corpus/sql/baseline_mimic_features.sql) plus age (standardised on
train) and sex. A question is matched to its cohort row by (task, subject_id,
hadm_id), which gives the visit index that bounds its context. Trained on the
train split's questions only; the code vocabulary is fitted on train too
(codes in at least `min_code_count` train questions, the `max_codes` most
frequent), so nothing about val/test patients shapes the model.

masked_value (registry): one logistic regression per hidden feature, on the
registry's other columns, predicting which of the feature's options holds its
value: the range index (the question's own ranges, rebuilt exactly by
`corpus.questions.masked_value`) or the category. Inputs are what a question of
that feature may show: the hidden column and any column whose mutual
information with it exceeds `masked_value.mi_threshold` are left out (the
question withholds them), outcomes only under `show_outcomes`; numeric columns
are median-imputed with a missing flag and standardised, categories one-hot.
Trained on every registry row whose patient has no val or test question
(train-split question patients included), so it sees far more than the
train questions and never a held-out patient. A question's prediction is the
option with the highest probability among its options (fillers never).

Both kinds are also scored as a majority-class predictor (the most frequent
train class; per feature for masked_value), the floor a model must clear.

A task with fewer than `min_train_rows` train rows or a single train class is
reported as skipped with the reason, not fitted. Deterministic: lbfgs, fixed
seed, inputs sorted by question id; same inputs, same bytes.

Outputs: metrics/baseline.json (headline figures per task: a DVC metric),
data/baseline/details.json (every split's full figures, confusion matrices,
the majority predictor) and data/baseline/predictions.parquet (one row per
question: the model's and the majority's option).
"""

from __future__ import annotations

import bisect
import logging
import warnings
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import polars as pl
from scipy import sparse
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from threadpoolctl import threadpool_limits

from corpus.atomic import atomic_path, write_json
from corpus.config import _build
from corpus.errors import ConfigError, SourceError
from corpus.scoring import classification_metrics, task_labels, to_label

log = logging.getLogger(__name__)

MIMIC_TASKS = ("mortality", "readmission", "los")
REGISTRY_TASK = "masked_value"
SPLITS = ("train", "val", "test")
# Headline figures copied from the test split's scores into metrics/baseline.json.
HEADLINE = ("accuracy", "macro_f1", "tpr", "tnr")

METRICS = Path("metrics/baseline.json")
DETAILS = Path("data/baseline/details.json")
PREDICTIONS = Path("data/baseline/predictions.parquet")


@dataclass(frozen=True)
class BaselineConfig:
    seed: int = 13
    # Inverse L2 strength of every logistic regression (scikit-learn's C).
    C: float = 1.0
    # balanced | null: class weights of the MIMIC models (rare positives: TPR matters there).
    class_weight: str | None = "balanced"
    # Class weights of the masked-value models: null fits the registry's real range shares.
    registry_class_weight: str | None = None
    max_codes: int = 5000
    min_code_count: int = 2
    # Fewer train rows than this (or one class): the task is reported as skipped.
    min_train_rows: int = 10
    max_iter: int = 2000

    def __post_init__(self) -> None:
        for key in ("class_weight", "registry_class_weight"):
            if getattr(self, key) not in ("balanced", None):
                raise ConfigError(f"params.yaml baseline.{key}: expected balanced or null, found {getattr(self, key)!r}")
        if self.C <= 0:
            raise ConfigError(f"params.yaml baseline.C: expected > 0, found {self.C}")
        if self.max_codes < 1 or self.min_code_count < 1 or self.min_train_rows < 2 or self.max_iter < 1:
            raise ConfigError("params.yaml baseline: max_codes, min_code_count, max_iter must be >= 1 and min_train_rows >= 2")


def baseline_config(params: dict[str, Any]) -> BaselineConfig:
    return _build(BaselineConfig, params, "baseline", C=float, seed=int, max_codes=int, min_code_count=int,
                  min_train_rows=int, max_iter=int)


def _classifier(config: BaselineConfig, class_weight: str | None, solver: str) -> LogisticRegression:
    return LogisticRegression(C=config.C, class_weight=class_weight, max_iter=config.max_iter,
                              solver=solver, random_state=config.seed)


def _fit(model: LogisticRegression, X, y) -> LogisticRegression:
    with warnings.catch_warnings():
        # lbfgs short of its tolerance still gives a usable reference model; max_iter is a param
        warnings.simplefilter("ignore", ConvergenceWarning)
        return model.fit(X, y)


def _skip_reason(y: list, min_rows: int) -> str | None:
    if len(y) < min_rows:
        return f"{len(y)} train row(s), fewer than baseline.min_train_rows = {min_rows}"
    counts = Counter(y)
    if len(counts) < 2:
        return f"one class in train ({', '.join(f'{k}: {v}' for k, v in sorted(counts.items()))})"
    return None


def _best_option(classes: list, scores: np.ndarray, option_classes: list) -> int:
    """Index of the option whose class scores highest (classes the model never saw score -inf); first on ties."""
    by_class = {c: float(s) for c, s in zip(classes, scores)}
    ranked = [by_class.get(c, -np.inf) if c is not None else -np.inf for c in option_classes]
    return int(np.argmax(ranked))


# --- question files ----------------------------------------------------------------


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


def _labels_of(task: str, questions: pl.DataFrame) -> tuple[list[str], str | None]:
    """The task's labels; every question of the task must give the same ones."""
    seen = {tuple(o) for o in questions["options"].to_list()}
    sets = {tuple(task_labels(task, list(options))[0]) for options in seen}
    if len(sets) != 1:
        raise SourceError(f"data/questions: task {task} questions have differing label sets {sorted(sets)}")
    return task_labels(task, list(next(iter(seen))))


# --- MIMIC tasks -------------------------------------------------------------------


def mimic_features(questions: pl.DataFrame, cohorts: Path, warehouse: Path, db) -> pl.DataFrame:
    """`questions` of one MIMIC task joined with their age, gender and bag of codes."""
    from corpus.db import connect, quote_path, sql_file

    task = questions["task"][0]
    cohort_path = Path(cohorts) / f"{task}.parquet"
    for path in (cohort_path, Path(cohorts) / "visits.parquet"):
        if not path.exists():
            raise SourceError(f"{path}: cohort file not found (run the cohorts stage first)")
    con = connect(db)
    try:
        con.execute(f"CREATE VIEW samples AS SELECT subject_id, hadm_id, visit_index FROM read_parquet({quote_path(cohort_path)})")
        con.execute(f"CREATE VIEW visits AS SELECT subject_id, hadm_id, visit_index FROM read_parquet({quote_path(Path(cohorts) / 'visits.parquet')})")
        for table in ("admissions", "patients", "diagnoses_icd", "procedures_icd", "prescriptions"):
            path = Path(warehouse) / f"{table}.parquet"
            if not path.exists():
                raise SourceError(f"{path}: warehouse table {table} not found (run the ingest stage first)")
            con.execute(f"CREATE VIEW {table} AS SELECT * FROM read_parquet({quote_path(path)})")
        features = con.sql(sql_file("baseline_mimic_features")).pl()
    finally:
        con.close()
    joined = questions.join(features, on=["subject_id", "hadm_id"], how="left")
    missing = joined.filter(pl.col("codes").is_null())
    if missing.height:
        raise SourceError(
            f"{cohort_path}: no row for {missing.height} {task} question(s), e.g. {missing['id'][0]} "
            f"(subject_id {missing['subject_id'][0]}, hadm_id {missing['hadm_id'][0]}); re-run the questions stage"
        )
    return joined.sort("id")


class CodeVocabulary:
    """Codes seen in at least `min_count` training bags, the `max_codes` most frequent (ties by code)."""

    def __init__(self, bags: list[list[str]], min_count: int, max_codes: int):
        counts = Counter(code for bag in bags for code in set(bag))
        kept = sorted((c for c, n in counts.items() if n >= min_count), key=lambda c: (-counts[c], c))[:max_codes]
        self.index = {code: i for i, code in enumerate(sorted(kept))}

    def transform(self, bags: list[list[str]]) -> sparse.csr_matrix:
        rows, cols = [], []
        for row, bag in enumerate(bags):
            for col in sorted({self.index[c] for c in bag if c in self.index}):
                rows.append(row)
                cols.append(col)
        return sparse.csr_matrix((np.ones(len(rows)), (rows, cols)), shape=(len(bags), len(self.index)))


def _mimic_design(frame: pl.DataFrame, vocabulary: CodeVocabulary, age_mean: float, age_std: float):
    age = frame["age"].cast(pl.Float64).fill_null(age_mean).to_numpy()
    female = (frame["gender"] == "F").fill_null(False).cast(pl.Float64).to_numpy()
    dense = np.column_stack([(age - age_mean) / age_std, female])
    return sparse.hstack([vocabulary.transform(frame["codes"].to_list()), sparse.csr_matrix(dense)]).tocsr()


def mimic_task(frame: pl.DataFrame, labels: list[str], config: BaselineConfig) -> dict:
    """Fit on the train rows of one MIMIC task's feature frame; predictions (option texts) for every row."""
    train = frame.filter(pl.col("split") == "train")
    y = [to_label(a, labels) for a in train["answer"]]
    counts = Counter(y)
    majority = min(counts, key=lambda c: (-counts[c], c)) if counts else None
    result = {"n_train": train.height, "majority": [_option_of(o, majority, labels) for o in frame["options"]]}
    reason = _skip_reason(y, config.min_train_rows)
    if reason:
        return {**result, "skipped": reason, "model": [None] * frame.height}
    vocabulary = CodeVocabulary(train["codes"].to_list(), config.min_code_count, config.max_codes)
    ages = train["age"].cast(pl.Float64).drop_nulls().to_numpy()
    age_mean = float(ages.mean()) if len(ages) else 0.0
    age_std = float(ages.std()) if len(ages) and ages.std() > 0 else 1.0
    model = _fit(_classifier(config, config.class_weight, "lbfgs"), _mimic_design(train, vocabulary, age_mean, age_std), y)
    predicted = model.predict(_mimic_design(frame, vocabulary, age_mean, age_std))
    return {**result, "model": [_option_of(o, str(p), labels) for o, p in zip(frame["options"], predicted)],
            "inputs": {"codes": len(vocabulary.index), "age_sex": 2}}


def _option_of(options, label: str | None, labels: list[str]) -> str | None:
    """The option of a question that stands for `label` ("C" -> "C. 7 to 13 days")."""
    if label is None:
        return None
    return next(o for o in options if to_label(o, labels) == label)


# --- masked_value (registry) ------------------------------------------------------


def _category(value: Any) -> str:
    """A category as the question builder keys it: 1, 1.0 and '1' are all '1'."""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return str(value)


class _RegistryDesign:
    """Numeric columns median-imputed (+ missing flag) and standardised, categorical one-hot; fitted on train rows."""

    def __init__(self, train: pl.DataFrame, columns):
        self.numeric, self.categorical = [], []
        for column in columns:
            if column.type == "numeric":
                values = train[column.name].cast(pl.Float64).to_numpy()
                recorded = values[np.isfinite(values)]
                if len(recorded) == 0:
                    continue  # never recorded in training: carries nothing
                std = float(recorded.std())
                self.numeric.append((column.name, float(np.median(recorded)), float(recorded.mean()), std if std > 0 else 1.0))
            else:
                kept = sorted({_category(v) for v in train[column.name].to_list() if not column.is_missing(v)})
                self.categorical.append((column, kept))

    def transform(self, frame: pl.DataFrame) -> np.ndarray:
        parts = []
        for name, median, mean, std in self.numeric:
            values = frame[name].cast(pl.Float64).to_numpy()
            missing = ~np.isfinite(values)
            parts += [(np.where(missing, median, values) - mean) / std, missing.astype(float)]
        for column, kept in self.categorical:
            texts = [None if column.is_missing(v) else _category(v) for v in frame[column.name].to_list()]
            parts += [np.array([t == k for t in texts], dtype=float) for k in kept]
        return np.column_stack(parts) if parts else np.zeros((frame.height, 0))


def registry_task(questions: pl.DataFrame, registry: pl.DataFrame, spec, mv_config, note_values: dict,
                  config: BaselineConfig) -> dict:
    """One model per hidden feature on registry rows of patients without val/test questions; an option per question."""
    from corpus.questions.masked_value import masked_value_questions

    id_name = spec.id_column.name
    built = {q.record["id"]: q for q in masked_value_questions(registry, spec, mv_config, note_values=note_values)}
    missing = [i for i in questions["id"].to_list() if i not in built]
    if missing:
        raise SourceError(
            f"data/questions: {len(missing)} masked_value question(s), e.g. {missing[0]}, are not rebuilt from "
            f"data/warehouse/registry.parquet with params.yaml masked_value (re-run the questions stage)"
        )
    held_out = set(questions.filter(pl.col("split") != "train")["subject_id"].to_list())
    pool = registry.filter(~pl.col(id_name).is_in(sorted(held_out)))
    rows_by_id = {row[id_name]: i for i, row in enumerate(registry.select(id_name).to_dicts())}
    question_ids = questions["id"].to_list()
    by_feature: dict[str, list[int]] = {}
    for position, qid in enumerate(question_ids):
        by_feature.setdefault(built[qid].feature, []).append(position)
    model_options: list[str | None] = [None] * len(question_ids)
    majority_options: list[str | None] = [None] * len(question_ids)
    per_feature, n_train = {}, 0
    for feature in sorted(by_feature):
        column = spec.column(feature)
        positions = by_feature[feature]
        first = built[question_ids[positions[0]]]
        if column.type == "numeric":
            # all questions of a feature share its ranges; option i holds [b(i), b(i+1))
            boundaries = sorted(lo for lo, _ in first.option_values if lo is not None)
            target_of: Callable[[Any], Any] = lambda v, b=boundaries: bisect.bisect_right(b, float(v))  # noqa: E731
            option_class = lambda span, b=boundaries: None if span is None else (0 if span[0] is None else b.index(span[0]) + 1)  # noqa: E731
        else:
            target_of = _category
            option_class = lambda value: None if value is None else _category(value)  # noqa: E731
        train = pool.filter(pl.col(feature).is_not_null())
        if column.type == "numeric":
            train = train.filter(pl.col(feature).cast(pl.Float64).is_finite())
        else:
            train = train.filter(~pl.col(feature).map_elements(column.is_missing, return_dtype=pl.Boolean))
        y = [target_of(v) for v in train[feature].to_list()]
        n_train += len(y)
        counts = Counter(y)
        # what a question of this feature may show: never a column one of them withholds (mutual information)
        withheld = {name for p in positions for name in built[question_ids[p]].withheld}
        inputs = [c for c in spec.columns
                  if c.role != "id" and c.name != feature and c.name not in withheld
                  and (c.role != "outcome" or mv_config.show_outcomes)]
        reason = _skip_reason(y, config.min_train_rows)
        model = design = None
        if reason is None:
            design = _RegistryDesign(train, inputs)
            model = _fit(_classifier(config, config.registry_class_weight, "newton-cg"), design.transform(train), y)
        rows = registry[[rows_by_id[questions["subject_id"][p]] for p in positions]]
        scores = model.predict_proba(design.transform(rows)) if model is not None else None
        for k, position in enumerate(positions):
            question = built[question_ids[position]]
            classes = [option_class(v) for v in question.option_values]
            options = question.record["options"]
            majority_options[position] = options[_best_option(list(counts), np.array(list(counts.values()), float), classes)]
            if scores is not None:
                model_options[position] = options[_best_option(list(model.classes_), scores[k], classes)]
        per_feature[feature] = {"n_train": len(y), "inputs": len(inputs), "questions": len(positions),
                                **({"skipped": reason} if reason else {})}
    return {"n_train": n_train, "n_train_patients": pool.height, "model": model_options, "majority": majority_options,
            "features": per_feature}


# --- scoring and the stage -----------------------------------------------------------


def score_task(task: str, frame: pl.DataFrame, result: dict) -> dict:
    """Per predictor (model, majority) and split: classification_metrics of the chosen options."""
    labels, positive = _labels_of(task, frame)
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
            result = mimic_task(features, _labels_of(task, frame)[0], config)
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


def run_baseline(params_path: Path = Path("params.yaml")) -> dict:
    """The DVC stage: read params and the pipeline's artifacts, write the three outputs; returns the metrics."""
    from corpus.config import duckdb_config, load_params, masked_value_config, registry_config
    from corpus.stages import COHORTS, MIMIC_WAREHOUSE, QUESTIONS, REGISTRY

    params = load_params(params_path)
    config = baseline_config(params)
    db = duckdb_config(params)
    mv_config = masked_value_config(params)
    questions = read_questions(QUESTIONS)

    def registry(frame: pl.DataFrame) -> dict:
        from corpus.registry.build import load_registry
        from corpus.registry.spec import load_registry_spec

        if mv_config is None:
            raise ConfigError("params.yaml masked_value: missing, but data/questions holds masked_value questions")
        spec_path = registry_config(params).spec
        return registry_task(frame, load_registry(REGISTRY, spec_path), load_registry_spec(spec_path), mv_config,
                             {"window_hours": registry_config(params).window_hours}, config)

    # One BLAS thread: these problems are tiny, and OpenBLAS threads on a busy 2-core host spin-wait
    # (an lbfgs fit on 3,000 x 80 took 1.1 s with two threads, 0.04 s with one).
    with threadpool_limits(1):
        metrics, details, predictions = build_baseline(
            questions, lambda frame: mimic_features(frame, COHORTS, MIMIC_WAREHOUSE, db), registry, config)
    with atomic_path(PREDICTIONS) as tmp:
        predictions.write_parquet(tmp, compression="zstd")
    write_json(DETAILS, details)
    write_json(METRICS, metrics)
    return metrics
