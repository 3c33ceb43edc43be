"""Cohort labels on the real demo, checked against an independent polars computation.

The reference below re-implements the label rules of DESIGN.md from the raw
CSVs with polars and Python datetimes, sharing no code or SQL with the stage.
"""

from __future__ import annotations

import json

import polars as pl
import pytest

from tests.conftest import DEMO, requires_demo

pytestmark = requires_demo


def _reference_samples(convention: str, window_days: int = 15, bins=(0, 3, 7, 14)) -> dict[str, dict[int, int]]:
    """{task: {hadm_id: label}} computed straight from the demo CSVs."""
    adm = pl.read_csv(DEMO / "hosp/admissions.csv.gz", try_parse_dates=True).sort(["subject_id", "admittime", "hadm_id"])
    pat = pl.read_csv(DEMO / "hosp/patients.csv.gz")
    dx = set(pl.read_csv(DEMO / "hosp/diagnoses_icd.csv.gz", infer_schema=False)["hadm_id"].cast(pl.Int64))
    px = set(pl.read_csv(DEMO / "hosp/procedures_icd.csv.gz", infer_schema=False)["hadm_id"].cast(pl.Int64))
    rx_frame = pl.read_csv(DEMO / "hosp/prescriptions.csv.gz", infer_schema=False)
    rx = set(rx_frame.filter(pl.col("drug").str.strip_chars() != "")["hadm_id"].cast(pl.Int64))
    anchor = {r["subject_id"]: (r["anchor_age"], r["anchor_year"]) for r in pat.iter_rows(named=True)}

    out: dict[str, dict[int, int]] = {"mortality": {}, "readmission": {}, "los": {}}
    for _, visits in adm.group_by("subject_id", maintain_order=True):
        rows = visits.to_dicts()
        for i, visit in enumerate(rows):
            hadm = visit["hadm_id"]
            if not (hadm in dx and hadm in px and hadm in rx):
                continue
            age, year = anchor[visit["subject_id"]]
            if convention == "pyhealth" and age + visit["admittime"].year - year < 18:
                continue
            los_days = (visit["dischtime"] - visit["admittime"]).days
            out["los"][hadm] = sum(1 for edge in bins if edge <= los_days) - 1
            if i + 1 == len(rows):
                continue
            nxt = rows[i + 1]
            out["mortality"][hadm] = int(nxt["hospital_expire_flag"])
            if convention == "kare":
                readmitted = (nxt["admittime"] - visit["admittime"]).days < window_days
            else:
                readmitted = (nxt["admittime"] - visit["dischtime"]).total_seconds() < window_days * 86400
            out["readmission"][hadm] = int(readmitted)
    return out


@pytest.mark.parametrize("convention", ["kare", "pyhealth"])
def test_labels_match_independent_computation(demo_cohorts, convention):
    reference = _reference_samples(convention)
    for task, expected in reference.items():
        frame = pl.read_parquet(demo_cohorts[convention] / f"{task}.parquet")
        got = dict(zip(frame["hadm_id"].to_list(), frame["label"].to_list()))
        assert got == expected, f"{convention}/{task} differs from the reference"
        assert set(frame["label_convention"]) == {convention}
        assert frame["hadm_id"].n_unique() == frame.height


def test_kare_counts_are_those_of_design(demo_cohorts):
    counts = {
        task: pl.read_parquet(demo_cohorts["kare"] / f"{task}.parquet")["label"].value_counts().sort("label").rows()
        for task in ("mortality", "readmission", "los")
    }
    assert counts["mortality"] == [(0, 98), (1, 10)]
    assert counts["readmission"] == [(0, 98), (1, 10)]
    assert sum(n for _, n in counts["los"]) == 186


def test_pyhealth_marks_eighteen_more_readmissions(demo_cohorts):
    positives = {
        conv: int(pl.read_parquet(demo_cohorts[conv] / "readmission.parquet")["label"].sum())
        for conv in ("kare", "pyhealth")
    }
    assert positives["pyhealth"] - positives["kare"] == 18


def test_visit_history_hides_label_fields_and_the_future(demo_cohorts):
    folder = demo_cohorts["kare"]
    visits = pl.read_parquet(folder / "visits.parquet")
    forbidden = {"hospital_expire_flag", "admittime", "dischtime", "deathtime", "discharge_location", "dod"}
    assert not forbidden & set(visits.columns)
    # Each sample's history is visits 0..visit_index of its patient, and it ends at its own admission.
    samples = pl.read_parquet(folder / "mortality.parquet")
    joined = samples.join(visits, on=["subject_id", "visit_index"], how="left", suffix="_visit")
    assert (joined["hadm_id"] == joined["hadm_id_visit"]).all()
    for visit_lists in ("conditions", "procedures", "medications"):
        assert (visits[visit_lists].list.len() > 0).all()
    # Lists are named by MIMIC's dictionaries, not raw codes.
    first = visits.row(0, named=True)
    assert all(not name.isalnum() for name in first["conditions"][:3])


def test_cohort_summary_counts_match_files(tmp_path, demo_warehouse, duckdb_config):
    from corpus.cohorts import build_cohorts
    from corpus.config import CohortConfig

    summary = build_cohorts(demo_warehouse, tmp_path / "c", tmp_path / "s.json", CohortConfig(), duckdb_config)
    assert json.loads((tmp_path / "s.json").read_text()) == summary
    for task, entry in summary["tasks"].items():
        assert entry["samples"] == pl.read_parquet(tmp_path / "c" / f"{task}.parquet").height


def test_bad_label_convention_is_rejected():
    from corpus.config import cohort_config
    from corpus.errors import ConfigError

    with pytest.raises(ConfigError, match="label_convention"):
        cohort_config({"cohorts": {"label_convention": "mimic3"}})
