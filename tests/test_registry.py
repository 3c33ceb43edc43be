"""The sepsis registry, registry loading against a column spec, and C-Reason masked-value questions.

Registry facts are checked against computations that do not share code with
the SQL: polars over the hourly files, and Python's csv module for one stay.
The registry is built once for the module (the slow part: 3,000 files).
"""

from __future__ import annotations

import csv
import json
import math
import re
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from sklearn.metrics import adjusted_mutual_info_score

from corpus.config import DuckDBConfig
from corpus.errors import ConfigError, SourceError
from corpus.questions.masked_value import (
    MaskedValueConfig,
    build_masked_value_questions,
    default_template_path,
    masked_value_questions,
)
from corpus.questions.record import template_hash
from corpus.registry import build_sepsis_registry, load_registry, load_registry_spec

REPO = Path(__file__).resolve().parents[1]
SEPSIS = Path(__file__).resolve().parents[2] / "shared/data/sepsis-challenge-2019"
SOURCE = SEPSIS / "training_setB"
SPEC = REPO / "schemas" / "registry_sepsis.yaml"
WINDOW = 24
VITALS_LABS = (
    "HR", "O2Sat", "Temp", "SBP", "MAP", "DBP", "Resp", "EtCO2", "BaseExcess", "HCO3", "FiO2", "pH",
    "PaCO2", "SaO2", "AST", "BUN", "Alkalinephos", "Calcium", "Chloride", "Creatinine", "Bilirubin_direct",
    "Glucose", "Lactate", "Magnesium", "Phosphate", "Potassium", "Bilirubin_total", "TroponinI", "Hct", "Hgb",
    "PTT", "WBC", "Fibrinogen", "Platelets",
)  # fmt: skip
HIDDEN = ("age", "gender", "icu_unit", "hr_mean", "hgb_mean", "hct_mean", "lactate_mean")
QUESTION_CONFIG = MaskedValueConfig(questions_per_feature=12, features=HIDDEN)
NOTE = {"window_hours": WINDOW}

pytestmark = pytest.mark.skipif(not SOURCE.is_dir(), reason=f"{SOURCE} not found")


def mean_column(variable: str) -> str:
    return variable.lower() + "_mean"


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    out = tmp_path_factory.mktemp("registry") / "registry.parquet"
    summary = build_sepsis_registry(SOURCE, SPEC, out, WINDOW, DuckDBConfig(memory_limit="2GB", threads=2))
    return out, summary


@pytest.fixture(scope="module")
def spec():
    return load_registry_spec(SPEC)


@pytest.fixture(scope="module")
def registry(built):
    return load_registry(built[0], SPEC)


@pytest.fixture(scope="module")
def hours() -> pl.DataFrame:
    """Every hourly row, read by polars (not by the SQL under test), with its stay id."""
    header = (SOURCE / "p100001.psv").read_text().splitlines()[0].split("|")
    frame = pl.read_csv(
        SOURCE / "*.psv", separator="|", null_values="NaN", schema={c: pl.Float64 for c in header},
        include_file_paths="path",
    )
    return frame.with_columns(pl.col("path").str.extract(r"p(\d+)\.psv$").cast(pl.Int64).alias("subject_id"))


@pytest.fixture(scope="module")
def questions(registry, spec):
    return masked_value_questions(registry, spec, QUESTION_CONFIG, note_values=NOTE)


# --- the registry --------------------------------------------------------------


def test_stays_and_sepsis_match_an_independent_count(built, registry, hours):
    _, summary = built
    stays = (
        hours.group_by("subject_id")
        .agg(
            pl.col("SepsisLabel").max().cast(pl.Int64).alias("sepsis"),
            (pl.col("ICULOS").filter(pl.col("SepsisLabel") == 1).min() + 6).alias("hours_to_sepsis"),
            pl.col("ICULOS").max().alias("icu_los_hours"),
        )
        .sort("subject_id")
    )
    assert stays.height == 3000 and int(stays["sepsis"].sum()) == 177
    assert summary["stays"] == 3000 and summary["sepsis_stays"] == 177 and summary["source_files"] == 3000
    assert registry.height == 3000
    assert registry["subject_id"].to_list() == stays["subject_id"].to_list() == list(range(100001, 103001))
    assert registry["sepsis"].cast(pl.Int64).to_list() == stays["sepsis"].to_list()
    assert registry["hours_to_sepsis"].to_list() == stays["hours_to_sepsis"].to_list()
    assert registry["icu_los_hours"].to_list() == stays["icu_los_hours"].to_list()


def test_window_means_of_every_stay_match_polars(registry, hours):
    expected = (
        hours.filter(pl.col("ICULOS") <= WINDOW)
        .group_by("subject_id")
        .agg([pl.col(v).mean().alias(mean_column(v)) for v in VITALS_LABS])
    )
    # a stay with no row in the window still has a registry row, with every mean null
    expected = registry.select("subject_id").join(expected, on="subject_id", how="left")
    for variable in VITALS_LABS:
        column = mean_column(variable)
        got, want = registry[column].to_numpy(), expected[column].to_numpy()
        assert np.array_equal(np.isnan(got), np.isnan(want)), column
        assert np.allclose(got[~np.isnan(got)], want[~np.isnan(want)], rtol=1e-12, atol=1e-12), column


@pytest.mark.parametrize("subject_id", [100006, 100013])
def test_window_means_of_one_stay_match_the_csv_module(registry, subject_id):
    # 100006 starts at ICU hour 6 (the window is counted in hours, not rows); 100013 is septic, 90 h long
    with open(SOURCE / f"p{subject_id}.psv", newline="") as handle:
        rows = list(csv.DictReader(handle, delimiter="|"))
    window = [r for r in rows if int(r["ICULOS"]) <= WINDOW]
    row = registry.filter(pl.col("subject_id") == subject_id).to_dicts()[0]
    for variable in VITALS_LABS:
        values = [float(r[variable]) for r in window if r[variable] != "NaN"]
        expected = sum(values) / len(values) if values else None
        got = row[mean_column(variable)]
        if expected is None:
            assert got is None, variable
        else:
            assert math.isclose(got, expected, rel_tol=1e-12), variable
    first = rows[0]
    assert row["age"] == float(first["Age"])
    assert row["gender"] == {"0": "female", "1": "male"}[first["Gender"]]
    assert row["hospital_to_icu_hours"] == -float(first["HospAdmTime"])


def test_window_and_onset_edges_on_a_hand_made_stay(tmp_path):
    header = (SOURCE / "p100001.psv").read_text().splitlines()[0]
    source = tmp_path / "source"
    source.mkdir()

    def hour(iculos: int, hr: str, label: int) -> str:
        values = ["NaN"] * 34
        values[0] = hr
        return "|".join(values + ["70", "0", "NaN", "NaN", "-2.5", str(iculos), str(label)])

    # ICU hours 2..5; the window of 3 hours holds hours 2 and 3 only; label from hour 4 -> onset hour 10
    lines = [header, hour(2, "80", 0), hour(3, "NaN", 0), hour(4, "100", 1), hour(5, "120", 1)]
    (source / "p000042.psv").write_text("\n".join(lines) + "\n")
    out = tmp_path / "registry.parquet"
    summary = build_sepsis_registry(source, SPEC, out, 3, DuckDBConfig(memory_limit="1GB", threads=1))
    row = load_registry(out, SPEC).to_dicts()[0]
    assert summary["stays"] == 1 and summary["sepsis_stays"] == 1
    assert (row["subject_id"], row["hr_mean"], row["o2sat_mean"]) == (42, 80.0, None)
    assert (row["gender"], row["icu_unit"], row["hospital_to_icu_hours"]) == ("female", "unknown", 2.5)
    assert (row["sepsis"], row["hours_to_sepsis"], row["icu_los_hours"]) == ("1", 10.0, 5.0)


def test_a_file_with_another_header_is_refused_by_name(tmp_path):
    source = tmp_path / "source"
    source.mkdir()
    header = (SOURCE / "p100001.psv").read_text().splitlines()[0].replace("Lactate", "Lactic")
    (source / "p000001.psv").write_text(header + "\n")
    with pytest.raises(SourceError, match=r"p000001\.psv.*Lactate"):
        build_sepsis_registry(source, SPEC, tmp_path / "r.parquet", WINDOW, DuckDBConfig())
    assert not (tmp_path / "r.parquet").exists()


# --- loading any registry against a spec ----------------------------------------


def test_a_spec_column_the_table_lacks_is_named(built, tmp_path):
    raw = yaml.safe_load(SPEC.read_text())
    raw["columns"].append(
        {"name": "lactate_max", "type": "numeric", "unit": "mmol/L", "readable": "Peak lactate", "role": "feature"}
    )
    bad_spec = tmp_path / "spec.yaml"
    bad_spec.write_text(yaml.safe_dump(raw))
    with pytest.raises(SourceError, match="lactate_max") as error:
        load_registry(built[0], bad_spec)
    assert str(built[0]) in str(error.value)


SMALL_SPEC = {
    "name": "small",
    "title": "small test registry",
    "columns": [
        {"name": "record", "type": "id", "unit": None, "readable": "Record", "role": "id"},
        {"name": "weight", "type": "numeric", "unit": "kg", "readable": "Body weight", "role": "feature",
         "decimals": 1},
        {"name": "smoker", "type": "categorical", "unit": None, "readable": "Smoker", "role": "feature",
         "categories": [0, 1], "labels": {0: "no", 1: "yes"}},
        {"name": "stage", "type": "categorical", "unit": None, "readable": "Tumour stage", "role": "feature"},
        {"name": "died", "type": "categorical", "unit": None, "readable": "Died within a year", "role": "outcome",
         "categories": ["no", "yes"]},
    ],
}  # fmt: skip


def _small_registry(tmp_path: Path, rows: list[str]) -> tuple[Path, Path]:
    spec_path = tmp_path / "small.yaml"
    spec_path.write_text(yaml.safe_dump(SMALL_SPEC))
    table = tmp_path / "small.csv"
    table.write_text("record,weight,smoker,stage,died,extra\n" + "\n".join(rows) + "\n")
    return table, spec_path


def test_a_csv_registry_with_its_spec_loads(tmp_path):
    stages = ["I", "II", "III", "IV", "IIA"]
    rows = [
        f"{i},{'NaN' if i % 7 == 0 else 50 + (i * 37) % 60 + 0.25},{i % 2},{stages[i % 5]},{'yes' if i % 3 else 'no'},x"
        for i in range(1, 61)
    ]
    table, spec_path = _small_registry(tmp_path, rows)
    frame = load_registry(table, spec_path)
    assert frame.columns == ["record", "weight", "smoker", "stage", "died"]  # spec order; `extra` ignored
    assert frame.schema["record"] == pl.Int64 and frame.schema["weight"] == pl.Float64
    assert frame["smoker"].to_list()[:2] == ["1", "0"]
    assert frame["weight"].null_count() == 8  # NaN reads as missing
    # any registry with a spec gives questions: five categories are cut to four options, one right
    spec = load_registry_spec(spec_path)
    made = masked_value_questions(frame, spec, MaskedValueConfig(questions_per_feature=5))
    assert {q.feature for q in made} == {"weight", "smoker", "stage"}
    for question in made:
        assert len(set(question.record["options"])) == 4 and question.record["answer"] in question.record["options"]


def test_a_parquet_registry_reads_nan_as_missing(tmp_path):
    table = tmp_path / "small.parquet"
    pq.write_table(
        pa.table({
            "record": [2, 1], "weight": [float("nan"), 80.5], "smoker": [float("nan"), 1.0],
            "stage": ["I", None], "died": ["no", "yes"],
        }),
        table,
    )
    _, spec_path = _small_registry(tmp_path, [])
    frame = load_registry(table, spec_path)
    assert frame.to_dicts() == [
        {"record": 1, "weight": 80.5, "smoker": "1", "stage": None, "died": "yes"},
        {"record": 2, "weight": None, "smoker": None, "stage": "I", "died": "no"},
    ]


def test_a_bad_spec_names_its_file_and_column(tmp_path):
    raw = {**SMALL_SPEC, "columns": [*SMALL_SPEC["columns"], {**SMALL_SPEC["columns"][1], "name": "weight2"}]}
    spec_path = tmp_path / "twice.yaml"
    spec_path.write_text(yaml.safe_dump(raw))
    with pytest.raises(ConfigError, match=r"twice\.yaml: column readable 'Body weight' is used twice"):
        load_registry_spec(spec_path)
    raw = {**SMALL_SPEC, "columns": [*SMALL_SPEC["columns"][:1], {**SMALL_SPEC["columns"][1], "type": "number"}]}
    spec_path.write_text(yaml.safe_dump(raw))
    with pytest.raises(ConfigError, match=r"twice\.yaml: column weight: type must be one of"):
        load_registry_spec(spec_path)


def test_values_of_the_wrong_type_are_named(tmp_path):
    table, spec_path = _small_registry(tmp_path, ["1,70.5,0,I,no,x", "2,heavy,1,II,yes,x"])
    with pytest.raises(SourceError, match=r"small\.csv: column weight .*heavy"):
        load_registry(table, spec_path)
    table, spec_path = _small_registry(tmp_path, ["1,70.5,0,I,no,x", "2,71.0,2,II,yes,x"])
    with pytest.raises(SourceError, match=r"column smoker .*'2'"):
        load_registry(table, spec_path)


# --- masked-value questions -----------------------------------------------------

RANGE = re.compile(
    r"^(?:below (?P<hi_only>-?\d+(?:\.\d+)?)\D*"
    r"|(?P<lo>-?\d+(?:\.\d+)?)\D* to below (?P<hi>-?\d+(?:\.\d+)?)\D*"
    r"|(?P<lo_only>-?\d+(?:\.\d+)?)\D* or above)$"
)


def parse_range(option: str) -> tuple[float, float]:
    """'B. 72.0 bpm to below 85.5 bpm' -> (72.0, 85.5); open ends are infinite."""
    match = RANGE.match(option.split(". ", 1)[1])
    assert match, option
    if match["hi_only"]:
        return -math.inf, float(match["hi_only"])
    if match["lo_only"]:
        return float(match["lo_only"]), math.inf
    return float(match["lo"]), float(match["hi"])


def test_questions_cover_the_chosen_features(questions):
    assert {q.feature for q in questions} == set(HIDDEN)
    for feature in HIDDEN:
        assert sum(q.feature == feature for q in questions) == 12  # every one of these is recorded often enough


def test_answers_are_among_four_distinct_options(questions):
    for question in questions:
        record = question.record
        assert len(record["options"]) == 4 and len(set(record["options"])) == 4
        assert [o[:3] for o in record["options"]] == ["A. ", "B. ", "C. ", "D. "]
        assert record["answer"] in record["options"]
        assert all(option in record["question"] for option in record["options"])


def test_exactly_one_range_holds_the_hidden_value(questions, spec):
    numeric = [q for q in questions if spec.column(q.feature).type == "numeric"]
    assert numeric
    for question in numeric:
        ranges = [parse_range(option) for option in question.record["options"]]
        holding = [i for i, (lo, hi) in enumerate(ranges) if lo <= question.value < hi]
        assert len(holding) == 1, (question.value, question.record["options"])
        assert question.record["options"][holding[0]] == question.record["answer"]
        # the ranges tile the real line without overlap
        ordered = sorted(ranges)
        assert ordered[0][0] == -math.inf and ordered[-1][1] == math.inf
        assert all(a[1] == b[0] for a, b in zip(ordered, ordered[1:]))
        # the structured bounds say the same as the text
        structured = [
            (-math.inf if lo is None else lo, math.inf if hi is None else hi) for lo, hi in question.option_values
        ]
        assert structured == ranges


def test_categorical_answers_name_the_hidden_category(questions, spec):
    categorical = [q for q in questions if spec.column(q.feature).type == "categorical"]
    assert {q.feature for q in categorical} == {"gender", "icu_unit"}
    for question in categorical:
        column = spec.column(question.feature)
        shown = [option.split(". ", 1)[1] for option in question.record["options"]]
        right = column.show_category(question.value)
        assert shown.count(right) == 1
        assert question.record["answer"].split(". ", 1)[1] == right
        assert question.value != "unknown"  # a missing value is never asked about


def test_the_hidden_feature_never_appears_in_the_context(questions, spec, registry):
    rows = {r["subject_id"]: r for r in registry.to_dicts()}
    for question in questions:
        column = spec.column(question.feature)
        context = question.record["context"]
        assert question.feature not in question.shown
        lines = context.splitlines()
        assert not any(line.startswith(f"{column.readable}:") for line in lines), (question.feature, context)
        # every value line is a shown column, in spec order, with the row's own value
        value_lines = [line for line in lines if ": " in line]
        assert [line.split(": ", 1)[0] for line in value_lines] == [spec.column(c).readable for c in question.shown]
        assert rows[question.record["subject_id"]][question.feature] == question.value


def test_no_context_column_shares_much_information_with_the_hidden_one(questions, spec, registry):
    # hematocrit and hemoglobin are nearly the same measurement: each is withheld when the other is hidden
    for question in questions:
        if question.feature in ("hct_mean", "hgb_mean"):
            other = "hgb_mean" if question.feature == "hct_mean" else "hct_mean"
            if registry.filter(pl.col("subject_id") == question.record["subject_id"])[other].item() is not None:
                assert other in question.withheld and other not in question.shown
                assert f"{spec.column(other).readable}:" not in question.record["context"]
    # recomputed here with sklearn, over every pair a context actually showed
    codes: dict[str, np.ndarray] = {}
    checked: set[tuple[str, str]] = set()
    for question in questions:
        for shown in question.shown:
            pair = (question.feature, shown)
            if pair not in checked:
                checked.add(pair)
                assert _adjusted_mi(registry, spec, codes, *pair) <= QUESTION_CONFIG.mi_threshold, pair
    assert _adjusted_mi(registry, spec, codes, "hct_mean", "hgb_mean") > QUESTION_CONFIG.mi_threshold


def _adjusted_mi(registry: pl.DataFrame, spec, codes: dict, a: str, b: str, bins: int = 10) -> float:
    """The documented measure: adjusted MI on 10 quantile bins (numeric) or categories, where both are recorded."""
    for name in (a, b):
        if name not in codes:
            column, series = spec.column(name), registry[name]
            if column.type == "categorical":
                labels = [None if column.is_missing(v) else v for v in series.to_list()]
                index = {v: i for i, v in enumerate(sorted({v for v in labels if v is not None}))}
                codes[name] = np.array([-1 if v is None else index[v] for v in labels])
            else:
                values = series.cast(pl.Float64).fill_null(np.nan).to_numpy()
                edges = np.unique(np.nanquantile(values, np.linspace(0, 1, bins + 1)[1:-1]))
                codes[name] = np.where(np.isnan(values), -1, np.searchsorted(edges, values, side="right"))
    both = (codes[a] >= 0) & (codes[b] >= 0)
    return adjusted_mutual_info_score(codes[a][both], codes[b][both]) if both.sum() >= 2 else 0.0


def test_a_lower_threshold_withholds_more(registry, spec):
    config = MaskedValueConfig(questions_per_feature=5, features=("map_mean",), mi_threshold=0.2)
    made = masked_value_questions(registry, spec, config, note_values=NOTE)
    for question in made:  # MAP shares ~0.29 with diastolic and ~0.22 with systolic pressure
        assert {"dbp_mean", "sbp_mean"} <= set(question.withheld)
        assert "Diastolic blood pressure:" not in question.record["context"]


def test_records_follow_the_question_schema(questions):
    records = [q.record for q in questions]
    assert [r["id"] for r in records] == sorted(r["id"] for r in records)
    expected_hash = template_hash(default_template_path())
    for record in records:
        assert record["task"] == "masked_value" and record["label_convention"] == "creason"
        assert record["hadm_id"] is None and record["split"] is None
        assert record["template_hash"] == expected_hash
        assert f"first {WINDOW} hours" in record["context"]


def test_same_inputs_give_identical_records(registry, spec):
    config = MaskedValueConfig(questions_per_feature=6, features=("hr_mean", "gender"))
    first = build_masked_value_questions(registry, spec, config, note_values=NOTE)
    second = build_masked_value_questions(registry, spec, config, note_values=NOTE)
    assert len(first) == 12
    assert json.dumps(first, sort_keys=True) == json.dumps(second, sort_keys=True)
    reseeded = build_masked_value_questions(
        registry, spec, MaskedValueConfig(questions_per_feature=6, features=("hr_mean", "gender"), seed=14),
        note_values=NOTE,
    )
    assert {r["id"] for r in reseeded} != {r["id"] for r in first}


def test_the_registry_stage_takes_any_table_with_a_spec(tmp_path, monkeypatch):
    """params registry.source may name a csv table: the stage checks it and writes the warehouse parquet."""
    from corpus.errors import CorpusError
    from corpus.stages import run_registry

    rows = [f"{i},{60 + i % 30}.5,{i % 2},{['I', 'II', 'III'][i % 3]},{'yes' if i % 4 else 'no'},x" for i in range(1, 41)]
    table, spec_path = _small_registry(tmp_path, rows)
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"registry": {"source": str(table), "spec": str(spec_path)}}))
    monkeypatch.chdir(tmp_path)
    summary = run_registry(params)
    written = pl.read_parquet(tmp_path / "data/warehouse/registry.parquet")
    assert summary["rows"] == written.height == 40
    assert written.columns == ["record", "weight", "smoker", "stage", "died"]

    raw = yaml.safe_load(spec_path.read_text())
    raw["columns"].append({"name": "bmi", "type": "numeric", "unit": "kg/m2", "readable": "BMI", "role": "feature"})
    spec_path.write_text(yaml.safe_dump(raw))
    before = (tmp_path / "data/warehouse/registry.parquet").read_bytes()
    with pytest.raises(CorpusError, match="bmi"):
        run_registry(params)
    assert (tmp_path / "data/warehouse/registry.parquet").read_bytes() == before  # finished work kept
