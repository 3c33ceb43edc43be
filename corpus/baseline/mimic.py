"""MIMIC tasks of the baseline: bag of codes of the context's visits + age and sex -> logistic regression."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import polars as pl
from scipy import sparse

from corpus.baseline import BaselineConfig, classifier, fit_quietly, skip_reason
from corpus.errors import SourceError
from corpus.scoring import to_label


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
    reason = skip_reason(y, config.min_train_rows)
    if reason:
        return {**result, "skipped": reason, "model": [None] * frame.height}
    vocabulary = CodeVocabulary(train["codes"].to_list(), config.min_code_count, config.max_codes)
    ages = train["age"].cast(pl.Float64).drop_nulls().to_numpy()
    age_mean = float(ages.mean()) if len(ages) else 0.0
    age_std = float(ages.std()) if len(ages) and ages.std() > 0 else 1.0
    model = fit_quietly(classifier(config, config.class_weight, "lbfgs"), _mimic_design(train, vocabulary, age_mean, age_std), y)
    predicted = model.predict(_mimic_design(frame, vocabulary, age_mean, age_std))
    return {**result, "model": [_option_of(o, str(p), labels) for o, p in zip(frame["options"], predicted)],
            "inputs": {"codes": len(vocabulary.index), "age_sex": 2}}


def _option_of(options, label: str | None, labels: list[str]) -> str | None:
    """The option of a question that stands for `label` ("C" -> "C. 7 to 13 days")."""
    if label is None:
        return None
    return next(o for o in options if to_label(o, labels) == label)
