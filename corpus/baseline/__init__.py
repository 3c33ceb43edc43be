"""The `baseline` stage: a scikit-learn tabular reference per task, on the questions' own splits.

What an LLM's figures in metrics/round-<r>.json should be read against. Every
figure comes from `corpus.scoring.classification_metrics`, on the same
question records (data/questions/{train,val,test}.parquet) the LLM answers.

MIMIC tasks (mortality, readmission, los): logistic regression on a bag of
codes of the visits in the question's context (ICD diagnoses and procedures,
drug names; corpus/sql/baseline_mimic_features.sql) plus age (standardised on
train) and sex: what the question's context shows, as codes (the current
visit's own lists included, as in the question). A question is matched to its cohort row by (task, subject_id,
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
reported as skipped with the reason, not fitted. Deterministic: lbfgs (MIMIC,
sparse codes) and newton-cg (registry, few dense columns: converges in a few
steps where lbfgs took hundreds), a fixed seed, one BLAS thread, inputs sorted
by question id; same inputs, same bytes.

Outputs: metrics/baseline.json (headline figures per task: a DVC metric),
metrics/details/baseline.json (every split's full figures, confusion matrices,
the majority predictor; small, tracked like the other stages' details) and
data/baseline/predictions.parquet (one row per
question: the model's and the majority's option). `n_train` counts train
questions for the MIMIC tasks and (registry row, hidden feature) training
examples summed over features for masked_value (`n_train_patients` in the
details); `n_test` counts test questions.

Modules: this one (config, shared model helpers), mimic.py, registry.py,
stage.py (question files, scoring, outputs: `run_baseline`).
"""

from __future__ import annotations

import warnings
from collections import Counter
from dataclasses import dataclass
from typing import Any

import numpy as np
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression

from corpus.config import _build
from corpus.errors import ConfigError

MIMIC_TASKS = ("mortality", "readmission", "los")
REGISTRY_TASK = "masked_value"


@dataclass(frozen=True)
class BaselineConfig:
    # random_state of every model: lbfgs and newton-cg are deterministic anyway; a stochastic solver would use it.
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


def classifier(config: BaselineConfig, class_weight: str | None, solver: str) -> LogisticRegression:
    return LogisticRegression(C=config.C, class_weight=class_weight, max_iter=config.max_iter,
                              solver=solver, random_state=config.seed)


def fit_quietly(model: LogisticRegression, X, y) -> LogisticRegression:
    with warnings.catch_warnings():
        # lbfgs short of its tolerance still gives a usable reference model; max_iter is a param
        warnings.simplefilter("ignore", ConvergenceWarning)
        return model.fit(X, y)


def skip_reason(y: list, min_rows: int) -> str | None:
    if len(y) < min_rows:
        return f"{len(y)} train row(s), fewer than baseline.min_train_rows = {min_rows}"
    counts = Counter(y)
    if len(counts) < 2:
        return f"one class in train ({', '.join(f'{k}: {v}' for k, v in sorted(counts.items()))})"
    return None


def best_option(classes: list, scores: np.ndarray, option_classes: list) -> int:
    """Index of the option whose class scores highest (classes the model never saw score -inf); first on ties."""
    by_class = {c: float(s) for c, s in zip(classes, scores)}
    ranked = [by_class.get(c, -np.inf) if c is not None else -np.inf for c in option_classes]
    return int(np.argmax(ranked))
