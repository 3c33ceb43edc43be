"""Stage baseline on the real demo and registry: the question splits, no held-out patient in training,
figures a majority predictor cannot beat on train, small metrics, same bytes twice; skipped tasks."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import polars as pl
import pytest
import yaml

from corpus.baseline import BaselineConfig, baseline_config
from corpus.baseline.mimic import CodeVocabulary, mimic_features, mimic_task
from corpus.baseline.registry import rebuild_questions, registry_task, training_pool
from corpus.baseline.stage import build_baseline, read_questions, run_baseline
from corpus.config import CohortConfig
from corpus.errors import ConfigError
from corpus.questions.masked_value import MaskedValueConfig, build_masked_value_questions
from corpus.questions.mimic import MIMIC_TASKS, build_mimic_questions
from corpus.questions.question_sets import publish_question_sets
from corpus.questions.sampling import SamplingPolicy
from corpus.registry.build import build_sepsis_registry, load_registry
from corpus.registry.spec import load_registry_spec
from tests.conftest import REPO, SEPSIS, requires_demo

pytestmark = [requires_demo, pytest.mark.skipif(not SEPSIS.is_dir(), reason=f"{SEPSIS} not found")]

SPEC = REPO / "schemas" / "registry_sepsis.yaml"
NATURAL = {task: SamplingPolicy() for task in MIMIC_TASKS}
# A few features keep the fixture quick; hct/hgb are withheld from each other's questions (mutual information).
MV = MaskedValueConfig(questions_per_feature=10, features=("age", "gender", "icu_unit", "temp_mean", "hr_mean",
                                                           "hct_mean", "hgb_mean", "wbc_mean"))
OUTPUTS = ("metrics/baseline.json", "metrics/details/baseline.json", "data/baseline/predictions.parquet")
HEADLINE_KEYS = {"n_train", "n_test", "majority_accuracy", "accuracy", "macro_f1", "tpr", "tnr", "skipped"}


@pytest.fixture(scope="module")
def workspace(tmp_path_factory, demo_warehouse, demo_cohorts, duckdb_config) -> Path:
    """A folder laid out like the repository after the questions stage, with matching params.yaml."""
    root = tmp_path_factory.mktemp("baseline")
    shutil.copytree(demo_warehouse, root / "data" / "warehouse" / "mimic")
    shutil.copytree(demo_cohorts["kare"], root / "data" / "cohorts")
    shutil.copytree(REPO / "schemas", root / "schemas")
    registry_path = root / "data" / "warehouse" / "registry.parquet"
    build_sepsis_registry(SEPSIS / "training_setB", SPEC, registry_path, 24, duckdb_config)
    questions = build_mimic_questions(root / "data" / "cohorts", NATURAL, CohortConfig(), seed=13)
    questions += build_masked_value_questions(load_registry(registry_path, SPEC), load_registry_spec(SPEC), MV,
                                              note_values={"window_hours": 24})
    publish_question_sets(questions, NATURAL, (0.8, 0.1, 0.1), 13, root / "data" / "questions")
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["masked_value"] = {**asdict(MV), "features": list(MV.features)}
    params["registry"]["window_hours"] = 24
    params["duckdb"] = {"memory_limit": "2GB", "threads": 2}
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return root


@pytest.fixture(scope="module")
def stage_run(workspace) -> dict:
    """The stage script run once in the workspace: {output path: bytes}."""
    done = subprocess.run([sys.executable, str(REPO / "stages" / "baseline.py")], cwd=workspace,
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    return {name: (workspace / name).read_bytes() for name in OUTPUTS}


@pytest.fixture(scope="module")
def details(stage_run) -> dict:
    return json.loads(stage_run["metrics/details/baseline.json"])


@pytest.fixture(scope="module")
def registry_inputs(workspace):
    questions = read_questions(workspace / "data" / "questions").filter(pl.col("task") == "masked_value")
    registry = load_registry(workspace / "data" / "warehouse" / "registry.parquet", SPEC)
    spec = load_registry_spec(SPEC)
    return questions, registry, spec, rebuild_questions(questions, registry, spec, MV, {"window_hours": 24})


def test_metrics_are_small_and_the_same_bytes_twice(workspace, stage_run, monkeypatch):
    summary = json.loads(stage_run["metrics/baseline.json"])
    metrics = {task: entry["headline"] for task, entry in json.loads(stage_run["metrics/details/baseline.json"]).items()}
    assert sorted(metrics) == ["los", "masked_value", "mortality", "readmission"]
    # The DVC metric: two numbers, the LLM evaluations' keys; accuracy weighted by test questions.
    fitted = [e for e in metrics.values() if "accuracy" in e]
    assert set(summary) == {"accuracy", "macro_f1"}
    assert summary["accuracy"] == round(sum(e["accuracy"] * e["n_test"] for e in fitted)
                                        / sum(e["n_test"] for e in fitted), 4)
    for task, entry in metrics.items():
        assert set(entry) <= HEADLINE_KEYS, (task, set(entry) - HEADLINE_KEYS)
        assert entry["n_train"] > 0 and entry["n_test"] > 0
        assert "skipped" in entry or 0.0 <= entry["accuracy"] <= 1.0
    assert {"tpr", "tnr"} <= set(metrics["readmission"]) and "tpr" not in metrics["los"]
    monkeypatch.chdir(workspace)
    for name in OUTPUTS:
        (workspace / name).unlink()
    run_baseline(Path("params.yaml"))
    for name in OUTPUTS:
        assert (workspace / name).read_bytes() == stage_run[name], f"{name} differs between two runs"


def test_predictions_follow_the_question_files(workspace, stage_run, details):
    questions = read_questions(workspace / "data" / "questions")
    predictions = pl.read_parquet(workspace / "data" / "baseline" / "predictions.parquet")
    assert predictions.select("id", "task", "split").equals(questions.select("id", "task", "split"))
    joined = predictions.join(questions.select("id", "options"), on="id")
    for row in joined.iter_rows(named=True):
        assert row["majority"] in row["options"]
        assert row["predicted"] is None or row["predicted"] in row["options"]
    for task, entry in details.items():
        test_count = questions.filter((pl.col("task") == task) & (pl.col("split") == "test")).height
        assert entry["majority"]["test"]["n"] == test_count
        if task != "masked_value":
            assert entry["n_train"] == questions.filter((pl.col("task") == task) & (pl.col("split") == "train")).height


def test_model_beats_or_matches_the_majority_class_on_train(details):
    for task, entry in details.items():
        assert "skipped" not in entry, (task, entry.get("skipped"))
        model, majority = entry["model"]["train"], entry["majority"]["train"]
        assert model["accuracy"] >= majority["accuracy"], task
        assert model["macro_f1"] > majority["macro_f1"], task
        assert model["parse_failure_rate"] == 0.0


def test_mimic_model_never_sees_val_or_test_labels_or_codes(workspace, duckdb_config):
    questions = read_questions(workspace / "data" / "questions").filter(pl.col("task") == "los")
    frame = mimic_features(questions, workspace / "data" / "cohorts", workspace / "data" / "warehouse" / "mimic",
                           duckdb_config)
    labels = ["A", "B", "C", "D"]
    config = BaselineConfig()
    clean = mimic_task(frame, labels, config)
    held_out = pl.col("split") != "train"
    # held-out rows get another answer and a code only they carry (often enough to enter a vocabulary fitted on them)
    other = pl.when(pl.col("answer").str.starts_with("A")).then(pl.col("options").list.get(1)).otherwise(
        pl.col("options").list.get(0))
    poisoned = frame.with_columns(
        pl.when(held_out).then(other).otherwise(pl.col("answer")).alias("answer"),
        pl.when(held_out).then(pl.col("codes").list.concat(pl.lit(["dx:9:POISON"]))).otherwise(pl.col("codes")).alias("codes"),
    )
    assert mimic_task(poisoned, labels, config) == clean
    # the same poisoning of train rows does change the model: the check above can fail
    flipped = frame.with_columns(pl.when(~held_out).then(other).otherwise(pl.col("answer")).alias("answer"))
    assert mimic_task(flipped, labels, config)["model"] != clean["model"]


def test_mimic_bag_holds_the_context_visits_only(workspace, duckdb_config):
    cohorts, warehouse = workspace / "data" / "cohorts", workspace / "data" / "warehouse" / "mimic"
    visits = pl.read_parquet(cohorts / "visits.parquet")
    cohort = pl.read_parquet(cohorts / "mortality.parquet")
    # a sample with an earlier visit in its context and a later qualifying visit outside it
    sample = cohort.filter((pl.col("visit_index") == 1)).join(
        visits.filter(pl.col("visit_index") == 2).select("subject_id"), on="subject_id").sort("subject_id").row(0, named=True)
    questions = read_questions(workspace / "data" / "questions").filter(
        (pl.col("task") == "mortality") & (pl.col("hadm_id") == sample["hadm_id"]))
    bag = set(mimic_features(questions, cohorts, warehouse, duckdb_config)["codes"][0])

    def tokens(hadm_ids):
        dx = pl.read_parquet(warehouse / "diagnoses_icd.parquet").filter(pl.col("hadm_id").is_in(hadm_ids))
        px = pl.read_parquet(warehouse / "procedures_icd.parquet").filter(pl.col("hadm_id").is_in(hadm_ids))
        rx = pl.read_parquet(warehouse / "prescriptions.parquet").filter(pl.col("hadm_id").is_in(hadm_ids))
        return ({f"dx:{v}:{c.strip()}" for c, v in dx.select("icd_code", "icd_version").iter_rows()}
                | {f"px:{v}:{c.strip()}" for c, v in px.select("icd_code", "icd_version").iter_rows()}
                | {f"rx:{d.strip().lower()}" for d in rx["drug"].drop_nulls() if d.strip()})

    mine = visits.filter(pl.col("subject_id") == sample["subject_id"])
    context = mine.filter(pl.col("visit_index") <= 1)["hadm_id"].to_list()
    later = mine.filter(pl.col("visit_index") == 2)["hadm_id"].to_list()
    assert bag == tokens(context)
    assert tokens(later) - tokens(context), "the later visit should have codes of its own for this check"
    assert not (tokens(later) - tokens(context)) & bag


def test_registry_pool_excludes_held_out_patients(registry_inputs):
    questions, registry, spec, _ = registry_inputs
    held_out = set(questions.filter(pl.col("split") != "train")["subject_id"].to_list())
    pool = training_pool(registry, questions, "subject_id")
    assert held_out and not held_out & set(pool["subject_id"].to_list())
    assert pool.height == registry.height - len(held_out)


def test_registry_models_never_see_held_out_rows(registry_inputs):
    questions, registry, spec, built = registry_inputs
    config = BaselineConfig()
    clean = registry_task(questions, registry, spec, built, True, config)
    train_positions = [i for i, s in enumerate(questions["split"].to_list()) if s == "train"]

    def poison(subjects):
        # every numeric value of these rows moved far away: any model that learnt from them changes
        numeric = [c.name for c in spec.columns if c.type == "numeric" and c.role != "id"]
        chosen = pl.col("subject_id").is_in(sorted(subjects))
        return registry.with_columns([pl.when(chosen).then(pl.col(n) * 10 + 1000).otherwise(pl.col(n)).alias(n)
                                      for n in numeric])

    held_out = set(questions.filter(pl.col("split") != "train")["subject_id"].to_list())
    after = registry_task(questions, poison(held_out), spec, built, True, config)
    assert [after["model"][i] for i in train_positions] == [clean["model"][i] for i in train_positions]
    assert after["n_train"] == clean["n_train"]
    # as many rows of patients without questions, poisoned the same way, do change train predictions
    asked = set(questions["subject_id"].to_list())
    others = [s for s in registry["subject_id"].to_list() if s not in asked][: len(held_out)]
    changed = registry_task(questions, poison(others), spec, built, True, config)
    assert [changed["model"][i] for i in train_positions] != [clean["model"][i] for i in train_positions]


def _questions(task: str, answers: dict[str, list[str]]) -> pl.DataFrame:
    rows = []
    for split, split_answers in answers.items():
        for i, answer in enumerate(split_answers):
            rows.append({"id": f"{split}{i:03d}", "task": task, "subject_id": len(rows), "hadm_id": 100 + len(rows),
                         "split": split, "options": ["Yes", "No"], "answer": answer})
    return pl.DataFrame(rows)


def _features(frame: pl.DataFrame) -> pl.DataFrame:
    return frame.with_columns(pl.lit(60).alias("age"), pl.lit("F").alias("gender"),
                              pl.lit(["dx:9:4280"]).alias("codes"))


@pytest.mark.parametrize(("answers", "reason"), [
    ({"train": ["No"] * 12, "val": ["No"], "test": ["Yes", "No"]}, "one class in train (No: 12)"),
    ({"train": ["No", "Yes", "No"], "val": ["No"], "test": ["Yes"]}, "3 train row(s), fewer than baseline.min_train_rows = 10"),
])
def test_too_little_to_fit_is_reported_not_fitted(answers, reason):
    questions = _questions("mortality", answers)
    metrics, details, predictions = build_baseline(questions, _features, None, BaselineConfig())
    assert metrics["mortality"]["skipped"] == reason
    assert "accuracy" not in metrics["mortality"] and "model" not in details["mortality"]
    assert metrics["mortality"]["n_test"] == len(answers["test"])
    assert predictions["predicted"].null_count() == predictions.height
    assert predictions["majority"].to_list() == ["No"] * predictions.height


def test_code_vocabulary_keeps_frequent_codes_fitted_on_its_bags():
    bags = [["a", "b"], ["a", "c"], ["a", "b"], ["d"]]
    assert list(CodeVocabulary(bags, min_count=2, max_codes=5).index) == ["a", "b"]
    assert list(CodeVocabulary(bags, min_count=1, max_codes=2).index) == ["a", "b"]  # b before c, d: more bags
    matrix = CodeVocabulary(bags, min_count=2, max_codes=5).transform([["b", "b", "zz"], []])
    assert matrix.toarray().tolist() == [[0.0, 1.0], [0.0, 0.0]]


def test_config_errors_name_the_key():
    assert baseline_config({}) == BaselineConfig()
    with pytest.raises(ConfigError, match="baseline: unknown key.*bogus"):
        baseline_config({"baseline": {"bogus": 1}})
    with pytest.raises(ConfigError, match="baseline.class_weight: expected balanced or null"):
        baseline_config({"baseline": {"class_weight": "auto"}})
