"""The ingest stage on the real demo and on broken copies of it."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import duckdb
import polars as pl
import pytest

from corpus.errors import SourceError
from corpus.hashing import file_sha256
from corpus.ingest.mimic import ingest_mimic
from tests.conftest import DEMO, TABLE_SPEC, requires_demo

pytestmark = requires_demo

REQUIRED = ["patients", "admissions", "diagnoses_icd", "procedures_icd", "prescriptions", "d_icd_diagnoses",
            "d_icd_procedures"]


@pytest.fixture
def demo_copy(tmp_path) -> Path:
    """A writable copy of the demo's required tables plus icustays."""
    root = tmp_path / "mimic"
    for table in REQUIRED + ["icustays"]:
        folder = "icu" if table == "icustays" else "hosp"
        (root / folder).mkdir(parents=True, exist_ok=True)
        shutil.copy(DEMO / folder / f"{table}.csv.gz", root / folder / f"{table}.csv.gz")
    return root


def _rewrite(root: Path, table: str, change) -> pl.DataFrame:
    """Replace hosp/<table>.csv.gz by a plain .csv of change(frame) (all columns as text)."""
    frame = pl.read_csv(root / "hosp" / f"{table}.csv.gz", infer_schema=False)
    (root / "hosp" / f"{table}.csv.gz").unlink()
    changed = change(frame)
    changed.write_csv(root / "hosp" / f"{table}.csv")
    return changed


def _run(source: Path, out_root: Path, duckdb_config):
    return ingest_mimic(source, TABLE_SPEC, out_root / "mimic", out_root / "ingest_report.json", duckdb_config)


def _assert_no_output(out_root: Path) -> None:
    assert not (out_root / "mimic").exists()
    assert not (out_root / "ingest_report.json").exists()
    leftovers = list(out_root.iterdir()) if out_root.exists() else []
    assert leftovers == [], f"partial output left behind: {leftovers}"


def test_demo_ingest_counts_every_row(demo_warehouse):
    report = json.loads((demo_warehouse.parent / "ingest_report.json").read_text())
    for table, entry in report["tables"].items():
        folder = "icu" if table in ("icustays", "d_items") else "hosp"
        source_rows = pl.scan_csv(DEMO / folder / f"{table}.csv.gz", infer_schema=False).select(pl.len()).collect().item()
        assert entry["rows_read"] == source_rows, table
        assert entry["rows_written"] == pl.read_parquet(demo_warehouse / f"{table}.parquet").height
    assert report["rows_excluded_total"] == 0
    # chartevents is absent from the demo: a warning, counted, never a crash.
    assert report["missing_optional_tables"] == 1
    manifest = json.loads((demo_warehouse / "manifest.json").read_text())
    assert manifest["missing_optional_tables"] == ["chartevents"]


def test_demo_ingest_types(demo_warehouse):
    schema = duckdb.sql(f"DESCRIBE SELECT * FROM '{demo_warehouse / 'admissions.parquet'}'").fetchall()
    types = {row[0]: row[1] for row in schema}
    assert types["admittime"] == "TIMESTAMP" and types["hadm_id"] == "BIGINT"
    # ICD codes are text: leading zeros survive.
    codes = pl.read_parquet(demo_warehouse / "d_icd_diagnoses.parquet")["icd_code"]
    assert codes.dtype == pl.String and codes.str.starts_with("0").any()
    # Only the spec's columns are read.
    assert "insurance" in types and "language" not in types


def test_missing_required_column_names_file_and_column(demo_copy, tmp_path, duckdb_config):
    _rewrite(demo_copy, "admissions", lambda f: f.drop("dischtime"))
    with pytest.raises(SourceError) as error:
        _run(demo_copy, tmp_path / "out", duckdb_config)
    assert "admissions.csv" in str(error.value) and "dischtime" in str(error.value)
    _assert_no_output(tmp_path / "out")


def test_missing_required_table_names_it(demo_copy, tmp_path, duckdb_config):
    (demo_copy / "hosp" / "procedures_icd.csv.gz").unlink()
    with pytest.raises(SourceError, match=r"hosp/procedures_icd.*required table procedures_icd"):
        _run(demo_copy, tmp_path / "out", duckdb_config)
    _assert_no_output(tmp_path / "out")


def test_dischtime_before_admittime_is_excluded_with_its_rows(demo_copy, tmp_path, duckdb_config):
    changed = _rewrite(
        demo_copy, "admissions",
        lambda f: f.with_columns(
            pl.when(pl.int_range(pl.len()) == 0).then(pl.lit("2100-01-01 00:00:00")).otherwise(pl.col("dischtime"))
            .alias("dischtime")
        ),
    )
    bad_hadm = int(changed["hadm_id"][0])
    report = _run(demo_copy, tmp_path / "out", duckdb_config)
    assert report["tables"]["admissions"]["excluded"] == {"dischtime before admittime": 1}
    dx_rows = pl.read_csv(DEMO / "hosp/diagnoses_icd.csv.gz").filter(pl.col("hadm_id") == bad_hadm).height
    assert dx_rows > 0
    assert report["tables"]["diagnoses_icd"]["excluded"] == {"unknown hadm_id": dx_rows}
    excluded = pl.read_parquet(tmp_path / "out/mimic/excluded/admissions.parquet")
    assert excluded.select("_reason", "hadm_id").rows() == [("dischtime before admittime", str(bad_hadm))]
    kept = pl.read_parquet(tmp_path / "out/mimic/admissions.parquet")
    assert bad_hadm not in kept["hadm_id"].to_list() and kept.height == changed.height - 1


def test_duplicate_hadm_id_excludes_every_copy(demo_copy, tmp_path, duckdb_config):
    changed = _rewrite(demo_copy, "admissions", lambda f: pl.concat([f, f.head(1)]))
    report = _run(demo_copy, tmp_path / "out", duckdb_config)
    assert report["tables"]["admissions"]["excluded"] == {"duplicate hadm_id": 2}
    assert report["tables"]["admissions"]["rows_written"] == changed.height - 2


def test_unknown_patient_and_null_key_and_bad_value(demo_copy, tmp_path, duckdb_config):
    def damage(frame: pl.DataFrame) -> pl.DataFrame:
        row = pl.int_range(pl.len())
        return frame.with_columns(
            pl.when(row == 1).then(pl.lit("99999999")).otherwise(pl.col("subject_id")).alias("subject_id"),
            pl.when(row == 2).then(pl.lit(None)).otherwise(pl.col("hadm_id")).alias("hadm_id"),
            pl.when(row == 3).then(pl.lit("maybe")).otherwise(pl.col("hospital_expire_flag"))
            .alias("hospital_expire_flag"),
        )

    _rewrite(demo_copy, "admissions", damage)
    report = _run(demo_copy, tmp_path / "out", duckdb_config)
    assert report["tables"]["admissions"]["excluded"] == {"null hadm_id": 1, "unknown subject_id": 1}
    # A value that does not parse as its type is counted, the row kept with a null.
    assert report["tables"]["admissions"]["invalid_values"] == {"hospital_expire_flag": 1}


def test_failed_run_keeps_the_previous_output(demo_copy, tmp_path, duckdb_config):
    out = tmp_path / "out"
    _run(demo_copy, out, duckdb_config)
    before = {p.name: file_sha256(p) for p in sorted((out / "mimic").glob("*.parquet"))}
    report_before = (out / "ingest_report.json").read_bytes()
    _rewrite(demo_copy, "diagnoses_icd", lambda f: f.drop("icd_version"))
    with pytest.raises(SourceError, match="icd_version"):
        _run(demo_copy, out, duckdb_config)
    after = {p.name: file_sha256(p) for p in sorted((out / "mimic").glob("*.parquet"))}
    assert after == before
    assert (out / "ingest_report.json").read_bytes() == report_before
    assert sorted(p.name for p in out.iterdir()) == ["ingest_report.json", "mimic"]


def test_parquet_source_gives_the_same_warehouse(demo_copy, tmp_path, duckdb_config):
    for gz in demo_copy.rglob("*.csv.gz"):
        table = gz.name.removesuffix(".csv.gz")
        duckdb.sql(f"COPY (SELECT * FROM read_csv('{gz}', all_varchar=true)) TO '{gz.parent / table}.parquet'")
        gz.unlink()
    from_parquet = _run(demo_copy, tmp_path / "pq", duckdb_config)
    for table in REQUIRED:
        assert from_parquet["tables"][table]["rows_written"] > 0
        a = pl.read_parquet(tmp_path / "pq/mimic" / f"{table}.parquet")
        b = pl.read_csv(DEMO / "hosp" / f"{table}.csv.gz", infer_schema=False)
        assert a.height == b.height, table


def test_optional_table_lacking_a_column_is_skipped_with_a_warning(demo_copy, tmp_path, duckdb_config, caplog):
    frame = pl.read_csv(demo_copy / "icu/icustays.csv.gz", infer_schema=False).drop("los")
    (demo_copy / "icu/icustays.csv.gz").unlink()
    frame.write_csv(demo_copy / "icu/icustays.csv")
    report = _run(demo_copy, tmp_path / "out", duckdb_config)
    assert "icustays" not in report["tables"]
    assert any("icustays" in r.getMessage() and "los" in r.getMessage() for r in caplog.records)


def test_same_source_same_bytes(demo_copy, tmp_path, duckdb_config):
    _run(demo_copy, tmp_path / "a", duckdb_config)
    _run(demo_copy, tmp_path / "b", duckdb_config)
    for path in sorted((tmp_path / "a").rglob("*.parquet")):
        twin = tmp_path / "b" / path.relative_to(tmp_path / "a")
        assert file_sha256(path) == file_sha256(twin), path.name
