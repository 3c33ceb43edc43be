"""The ingest stage on the real demo and on broken copies of it."""

from __future__ import annotations

import gzip
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
    # The DVC metrics file: headline counts only; the per-table counts sit beside it.
    headline = json.loads((demo_warehouse.parent / "ingest_report.json").read_text())
    assert headline == {"rows_excluded": 0, "invalid_values": 0, "excluded": {}}
    report = json.loads((demo_warehouse.parent / "ingest_details.json").read_text())
    for table, entry in report["tables"].items():
        folder = "icu" if table in ("icustays", "d_items") else "hosp"
        source_rows = pl.scan_csv(DEMO / folder / f"{table}.csv.gz", infer_schema=False).select(pl.len()).collect().item()
        assert entry["rows_read"] == source_rows, table
        assert entry["rows_written"] == pl.read_parquet(demo_warehouse / f"{table}.parquet").height
    assert report["rows_excluded_total"] == 0 and report["invalid_values_total"] == 0
    # chartevents is absent from the demo: a warning, listed, never a crash.
    assert report["missing_optional_tables"] == ["chartevents"]
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


def test_unknown_patient_and_null_key_and_bad_values(demo_copy, tmp_path, duckdb_config, caplog):
    def damage(frame: pl.DataFrame) -> pl.DataFrame:
        row = pl.int_range(pl.len())
        return frame.with_columns(
            pl.when(row == 1).then(pl.lit("99999999")).otherwise(pl.col("subject_id")).alias("subject_id"),
            pl.when(row == 2).then(pl.lit(None)).otherwise(pl.col("hadm_id")).alias("hadm_id"),
            pl.when(row == 3).then(pl.lit("maybe")).otherwise(pl.col("hospital_expire_flag"))
            .alias("hospital_expire_flag"),
            pl.when(row == 4).then(pl.lit("not a time")).otherwise(pl.col("deathtime")).alias("deathtime"),
        )

    changed = _rewrite(demo_copy, "admissions", damage)
    report = _run(demo_copy, tmp_path / "out", duckdb_config)
    # The mortality label's column does not parse: the row goes (a null would read as survival).
    assert report["tables"]["admissions"]["excluded"] == {
        "hospital_expire_flag does not parse as INTEGER": 1, "null hadm_id": 1, "unknown subject_id": 1}
    # A value that does not parse in a column no cohort reads is kept as null, counted and logged.
    assert report["tables"]["admissions"]["invalid_values"] == {"deathtime": 1}
    assert report["invalid_values_total"] == 1
    kept = pl.read_parquet(tmp_path / "out/mimic/admissions.parquet")
    assert kept.filter(pl.col("hadm_id") == int(changed["hadm_id"][4]))["deathtime"].to_list() == [None]
    assert any("admissions.csv" in r.getMessage() and "deathtime" in r.getMessage() and r.levelname == "WARNING"
               for r in caplog.records)


def _write_gz(path: Path, frame: pl.DataFrame) -> None:
    """`frame` as the demo ships its tables: a gzipped csv under the same name."""
    with gzip.open(path, "wt", encoding="utf-8", newline="") as handle:
        handle.write(frame.write_csv())


def test_required_table_with_a_header_only_stops_ingest_naming_the_file(demo_copy, tmp_path, duckdb_config):
    path = demo_copy / "hosp/admissions.csv.gz"
    _write_gz(path, pl.read_csv(path, infer_schema=False).head(0))
    with pytest.raises(SourceError) as error:
        _run(demo_copy, tmp_path / "out", duckdb_config)
    assert str(error.value) == (f"{path}: required table admissions has no rows (a header only): "
                                "nothing to build on")
    _assert_no_output(tmp_path / "out")


def test_unparseable_icd_version_excludes_the_rows_with_a_reason(demo_copy, tmp_path, monkeypatch):
    """Five icd_version values "nine" in diagnoses_icd.csv.gz: through `corpus ingest`,
    the rows are excluded (their diagnosis could not be named), kept in excluded/ with
    their source row, counted per table and reason, and the summary line says so."""
    from typer.testing import CliRunner

    from corpus.cli import app

    path = demo_copy / "hosp/diagnoses_icd.csv.gz"
    frame = pl.read_csv(path, infer_schema=False)
    bad_rows = [0, 1, 1000, 2500, frame.height - 1]
    _write_gz(path, frame.with_columns(
        pl.when(pl.int_range(pl.len()).is_in(bad_rows)).then(pl.lit("nine")).otherwise(pl.col("icd_version"))
        .alias("icd_version")))
    work = tmp_path / "work"
    work.mkdir()
    (work / "params.yaml").write_text(f"mimic:\n  source: {demo_copy}\n  table_spec: {TABLE_SPEC}\n"
                                      "duckdb:\n  memory_limit: 2GB\n  threads: 2\n")
    monkeypatch.chdir(work)
    result = CliRunner().invoke(app, ["ingest", "--params", "params.yaml"])
    assert result.exit_code == 0, result.output
    assert "5 row(s) excluded, 0 invalid value(s) kept as null" in " ".join(result.output.split())

    reason = "icd_version does not parse as INTEGER"
    headline = json.loads((work / "data/warehouse/ingest_report.json").read_text())
    assert headline == {"rows_excluded": 5, "invalid_values": 0, "excluded": {"diagnoses_icd": {reason: 5}}}
    details = json.loads((work / "metrics/details/ingest.json").read_text())
    assert details["tables"]["diagnoses_icd"]["excluded"] == {reason: 5}
    assert details["tables"]["diagnoses_icd"]["rows_written"] == frame.height - 5
    assert details["tables"]["diagnoses_icd"]["invalid_values"] == {}
    excluded = pl.read_parquet(work / "data/warehouse/mimic/excluded/diagnoses_icd.parquet")
    # _row: 1 = the first row after the header, so the source rows can be found again.
    assert excluded.select("_reason", "_row", "icd_version").rows() == [(reason, i + 1, "nine") for i in bad_rows]
    assert excluded["icd_code"].to_list() == frame["icd_code"].gather(bad_rows).to_list()
    kept = pl.read_parquet(work / "data/warehouse/mimic/diagnoses_icd.parquet")
    assert kept.height == frame.height - 5 and kept["icd_version"].null_count() == 0


def test_unparseable_value_in_a_strict_column_names_table_column_and_rows(demo_copy, tmp_path, duckdb_config):
    path = demo_copy / "hosp/d_icd_diagnoses.csv.gz"
    frame = pl.read_csv(path, infer_schema=False)
    _write_gz(path, frame.with_columns(
        pl.when(pl.int_range(pl.len()).is_in([6, 41])).then(pl.lit("ten")).otherwise(pl.col("icd_version"))
        .alias("icd_version")))
    with pytest.raises(SourceError) as error:
        _run(demo_copy, tmp_path / "out", duckdb_config)
    message = str(error.value)
    assert message.startswith(f"{path}: table d_icd_diagnoses, column icd_version (strict in the table spec): "
                              "2 value(s) do not parse as INTEGER; rows 7 ('ten'), 42 ('ten')"), message
    _assert_no_output(tmp_path / "out")


def test_a_column_listed_both_excluded_and_strict_is_refused(tmp_path):
    from corpus.errors import ConfigError
    from corpus.ingest.table_spec import load_table_spec

    spec = tmp_path / "spec.yaml"
    spec.write_text("tables:\n  t:\n    keys: [a]\n    columns: {a: BIGINT, b: INTEGER}\n"
                    "    exclude_unparsed: [b]\n    strict: [b]\n")
    with pytest.raises(ConfigError, match=r"spec.yaml: table t: column\(s\) \['b'\] are listed under both"):
        load_table_spec(spec)
    spec.write_text("tables:\n  t:\n    columns: {a: BIGINT}\n    strict: [c]\n")
    with pytest.raises(ConfigError, match=r"strict column\(s\) \['c'\] are not among its columns"):
        load_table_spec(spec)


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
