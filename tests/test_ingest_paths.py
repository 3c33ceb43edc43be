"""Ingest's quick path (clean tables) against its careful one, and the two-table schedule."""

from __future__ import annotations

import gzip
import threading
import time
from pathlib import Path

import duckdb
import polars as pl
import pytest

from corpus.config import DuckDBConfig
from corpus.db import connect
from corpus.hashing import file_sha256
from corpus.ingest import table as table_mod
from corpus.ingest.schedule import dependencies, run_tables
from corpus.ingest.table_spec import load_table_spec
from tests.conftest import DEMO, TABLE_SPEC, requires_demo

SPECS = {s.name: s for s in load_table_spec(TABLE_SPEC)}


def _both_paths(path: Path, name: str, tmp_path: Path, warehouse: Path):
    """The table through the quick path and through the careful one: (report, kept parquet) each;
    the tables its row rules name are read from `warehouse`."""
    spec = SPECS[name]
    results = []
    for way in ("quick", "careful"):
        out = tmp_path / way
        (out / "staging").mkdir(parents=True)
        con = connect(DuckDBConfig(memory_limit="1GB", threads=2))
        for earlier in dependencies(list(SPECS.values()))[name]:
            con.execute(f"CREATE VIEW {earlier} AS SELECT * FROM '{warehouse / earlier}.parquet'")
        report = table_mod.TableReport(file=path.name)
        if way == "quick":
            assert table_mod._ingest_clean(con, spec, path, report, out), "a clean table takes the quick path"
        else:
            table_mod._ingest_careful(con, spec, path, report, out, out / "staging")
        con.close()
        results.append((vars(report), out / f"{name}.parquet"))
    return results


@requires_demo
@pytest.mark.parametrize("name", ["prescriptions", "labevents"])
def test_quick_path_writes_the_careful_paths_bytes(name, tmp_path, demo_warehouse):
    (quick, quick_file), (careful, careful_file) = _both_paths(DEMO / "hosp" / f"{name}.csv.gz", name, tmp_path,
                                                               demo_warehouse)
    assert quick == careful and quick["rows_read"] > 1000
    assert file_sha256(quick_file) == file_sha256(careful_file)


@requires_demo
def test_values_kept_as_null_are_counted_alike_on_the_quick_path(tmp_path, demo_warehouse):
    frame = pl.read_csv(DEMO / "hosp/labevents.csv.gz", infer_schema=False)
    row = pl.int_range(pl.len())
    frame = frame.with_columns(
        pl.when(row.is_in([3, 70])).then(pl.lit("abc")).otherwise(pl.col("valuenum")).alias("valuenum"),
        pl.when(row == 9).then(pl.lit("2180-13-01 00:00:00")).otherwise(pl.col("charttime")).alias("charttime"),
    )
    path = tmp_path / "labevents.csv.gz"
    with gzip.open(path, "wt", encoding="utf-8", newline="") as handle:
        handle.write(frame.write_csv())
    (quick, quick_file), (careful, careful_file) = _both_paths(path, "labevents", tmp_path, demo_warehouse)
    assert quick["invalid_values"] == careful["invalid_values"] == {"charttime": 1, "valuenum": 2}
    assert quick["rows_written"] == frame.height and file_sha256(quick_file) == file_sha256(careful_file)


@requires_demo
def test_an_excluded_row_sends_the_table_down_the_careful_path(tmp_path):
    frame = pl.read_csv(DEMO / "hosp/labevents.csv.gz", infer_schema=False)
    frame = frame.with_columns(pl.when(pl.int_range(pl.len()) == 5).then(pl.lit(None)).otherwise(pl.col("itemid"))
                               .alias("itemid"))
    path = tmp_path / "labevents.csv"
    frame.write_csv(path)
    con = connect(DuckDBConfig(memory_limit="1GB", threads=2))
    report = table_mod.TableReport(file=path.name)
    assert not table_mod._ingest_clean(con, SPECS["labevents"], path, report, tmp_path)
    # Nothing written, nothing left behind for the careful path to trip on.
    assert not (tmp_path / "labevents.parquet").exists()
    assert con.execute("SELECT count(*) FROM duckdb_tables() WHERE temporary").fetchone()[0] == 0
    con.close()


def test_dependencies_are_the_earlier_tables_the_rules_name():
    deps = dependencies(list(SPECS.values()))
    assert deps["admissions"] == {"patients"}
    assert deps["prescriptions"] == deps["diagnoses_icd"] == deps["procedures_icd"] == {"admissions"}
    assert deps["patients"] == deps["labevents"] == deps["d_icd_diagnoses"] == set()


def _files(tmp_path: Path, sizes: dict[str, int]) -> dict[str, Path]:
    files = {}
    for name, size in sizes.items():
        files[name] = tmp_path / f"{name}.csv"
        files[name].write_bytes(b"x" * size)
    return files


def test_two_tables_run_at_once_and_dependents_wait(tmp_path):
    specs = list(SPECS.values())
    files = _files(tmp_path, {s.name: (10_000 if s.name == "labevents" else 10) for s in specs})
    running, started, overlap, lock = set(), [], [], threading.Lock()

    def work(cursor, spec):
        with lock:
            started.append(spec.name)
            assert dependencies(specs)[spec.name] <= set(started) - running, f"{spec.name} started too early"
            running.add(spec.name)
            overlap.append(len(running))
        assert cursor.execute("SELECT 1").fetchone() == (1,)
        time.sleep(0.05 if spec.name == "labevents" else 0.01)
        with lock:
            running.discard(spec.name)
        return spec.name

    con = duckdb.connect()
    results = run_tables(con, specs, files, work, workers=2)
    con.close()
    assert list(results) == [s.name for s in specs] and list(results.values()) == list(results)
    # The biggest file and the head of the longest chain go first, side by side.
    assert started[:2] == ["labevents", "patients"] and max(overlap) == 2


def test_the_error_raised_is_the_first_failing_table_in_spec_order(tmp_path):
    specs = list(SPECS.values())
    files = _files(tmp_path, {s.name: (10_000 if s.name == "labevents" else 10) for s in specs})
    ran = []

    def work(cursor, spec):
        ran.append(spec.name)
        if spec.name == "labevents":  # listed late, started first, fails first
            raise ValueError("labevents broke")
        time.sleep(0.01)
        if spec.name == "d_icd_diagnoses":
            raise ValueError("d_icd_diagnoses broke")
        return spec.name

    con = duckdb.connect()
    with pytest.raises(ValueError, match="d_icd_diagnoses broke"):
        run_tables(con, specs, files, work, workers=2)
    con.close()
    names = [s.name for s in specs]
    # Every table listed before the first failure ran; none listed after labevents started later.
    assert set(names[:names.index("d_icd_diagnoses")]) <= set(ran)
    assert not set(names[names.index("labevents") + 1:]) & set(ran)
