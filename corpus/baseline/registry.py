"""masked_value task of the baseline: per hidden feature, a logistic regression on the registry's other columns."""

from __future__ import annotations

import bisect
from collections import Counter
from typing import Any, Callable

import numpy as np
import polars as pl

from corpus.baseline import BaselineConfig, best_option, classifier, fit_quietly, skip_reason
from corpus.errors import SourceError


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


def rebuild_questions(questions: pl.DataFrame, registry: pl.DataFrame, spec, mv_config, note_values: dict) -> dict:
    """{question id: MaskedValueQuestion} rebuilt by corpus.questions.masked_value: each question's hidden
    feature and what its options hold, exactly as the questions stage made them (no parsing of option text)."""
    from corpus.questions.masked_value import masked_value_questions

    built = {q.record["id"]: q for q in masked_value_questions(registry, spec, mv_config, note_values=note_values)}
    missing = [i for i in questions["id"].to_list() if i not in built]
    if missing:
        raise SourceError(
            f"data/questions: {len(missing)} masked_value question(s), e.g. {missing[0]}, are not rebuilt from "
            f"the registry with params.yaml masked_value (re-run the questions stage)"
        )
    return built


def training_pool(registry: pl.DataFrame, questions: pl.DataFrame, id_name: str) -> pl.DataFrame:
    """Registry rows the models may learn from: every patient without a val or test question."""
    held_out = sorted(set(questions.filter(pl.col("split") != "train")["subject_id"].to_list()))
    return registry.filter(~pl.col(id_name).is_in(held_out))


def registry_task(questions: pl.DataFrame, registry: pl.DataFrame, spec, built: dict, show_outcomes: bool,
                  config: BaselineConfig) -> dict:
    """One model per hidden feature on `training_pool` rows; the chosen option of every question."""
    id_name = spec.id_column.name
    pool = training_pool(registry, questions, id_name)
    rows_by_id = {row[id_name]: i for i, row in enumerate(registry.select(id_name).to_dicts())}
    absent = [s for s in questions["subject_id"].to_list() if s not in rows_by_id]
    if absent:
        raise SourceError(f"registry: no row with {id_name} {absent[0]} for its masked_value question(s)")
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
                  and (c.role != "outcome" or show_outcomes)]
        reason = skip_reason(y, config.min_train_rows)
        model = design = None
        if reason is None:
            design = _RegistryDesign(train, inputs)
            model = fit_quietly(classifier(config, config.registry_class_weight, "newton-cg"), design.transform(train), y)
        rows = registry[[rows_by_id[questions["subject_id"][p]] for p in positions]]
        scores = model.predict_proba(design.transform(rows)) if model is not None else None
        for k, position in enumerate(positions):
            question = built[question_ids[position]]
            classes = [option_class(v) for v in question.option_values]
            options = question.record["options"]
            majority_options[position] = options[best_option(list(counts), np.array(list(counts.values()), float), classes)]
            if scores is not None:
                model_options[position] = options[best_option(list(model.classes_), scores[k], classes)]
        per_feature[feature] = {"n_train": len(y), "inputs": len(inputs), "questions": len(positions),
                                **({"skipped": reason} if reason else {})}
    return {"n_train": n_train, "n_train_patients": pool.height, "model": model_options, "majority": majority_options,
            "features": per_feature}
