"""The `ingest` stage for MIMIC-IV: source files -> typed, checked parquet.

For each table of the spec: find the file (csv, csv.gz or parquet), check that
every listed column is there, read only those columns with DuckDB, cast them to
the spec's types, and split the rows into kept and excluded (a value that does
not parse in a column the cohorts rely on, a null key, or a row rule, with the
reason). Nothing is dropped silently: excluded rows are written with their
reason and source row number; other values that do not parse are kept as null,
counted and logged. A required table without rows, or an unparseable value in
a column the spec marks strict, stops the stage with an error naming the file.
How a table is read (a quick path for clean tables, the careful one for the rest)
is corpus.ingest.table; the order, two tables at a time, corpus.ingest.schedule.

Output layout (written to a temporary folder and swapped in only when complete):

    <out>/<table>.parquet            kept rows, typed
    <out>/excluded/<table>.parquet   excluded rows, raw text, with `_reason` and `_row`
    <out>/manifest.json              source files, row counts, warnings

and two JSON files: the report (DVC metrics: the headline counts, exclusions per
table and reason) and, optionally, the details (per-table counts).
"""

from __future__ import annotations

import logging
from pathlib import Path

import duckdb

from corpus.atomic import atomic_dir, write_json
from corpus.config import DuckDBConfig
from corpus.db import connect, quote_path
from corpus.errors import SourceError
from corpus.ingest.schedule import run_tables
from corpus.ingest.table import TableReport, _reader, ingest_table
from corpus.ingest.table_spec import TableSpec, load_table_spec

log = logging.getLogger(__name__)

SUFFIXES = (".parquet", ".csv.gz", ".csv")


def find_table_file(source: Path, spec: TableSpec) -> Path | None:
    """The file holding `spec` under `source`: <folder>/<table>.{parquet,csv.gz,csv}."""
    for suffix in SUFFIXES:
        candidate = source / spec.folder / f"{spec.name}{suffix}"
        if candidate.is_file():
            return candidate
    return None


def _columns_of(con: duckdb.DuckDBPyConnection, path: Path) -> list[str]:
    try:
        return [row[0] for row in con.execute(f"DESCRIBE SELECT * FROM {_reader(path)}").fetchall()]
    except duckdb.Error as exc:
        raise SourceError(f"{path}: cannot read the file as a table: {exc}") from exc


def check_sources(source: Path, specs: list[TableSpec], con: duckdb.DuckDBPyConnection) -> dict[str, Path]:
    """Locate every table and check its columns; raise on a missing required table or column.

    Returns the files found; a missing optional table, or an optional table
    lacking a listed column, is logged as a warning and left out.
    """
    if not source.is_dir():
        raise SourceError(f"{source}: MIMIC-IV source folder not found (params.yaml mimic.source)")
    found: dict[str, Path] = {}
    for spec in specs:
        path = find_table_file(source, spec)
        expected = source / spec.folder / f"{spec.name}{{{','.join(SUFFIXES)}}}"
        if path is None:
            if spec.required:
                raise SourceError(f"{expected}: required table {spec.name} not found")
            log.warning("optional table %s not found (%s): skipped", spec.name, expected)
            continue
        present = _columns_of(con, path)
        missing = [c for c in spec.columns if c not in present]
        if missing:
            message = (
                f"{path}: table {spec.name} lacks column(s) {', '.join(missing)} "
                f"(found: {', '.join(present)})"
            )
            if spec.required:
                raise SourceError(message)
            log.warning("%s: optional table skipped", message)
            continue
        found[spec.name] = path
    return found


def headline_report(details: dict) -> dict:
    """What the DVC metrics file holds: the totals a user compares between runs, and
    the exclusions per table and reason (tables without any left out)."""
    return {
        "rows_excluded": details["rows_excluded_total"],
        "invalid_values": details["invalid_values_total"],
        "excluded": {name: entry["excluded"] for name, entry in details["tables"].items() if entry["excluded"]},
    }


def ingest_mimic(
    source: Path, table_spec: Path, out: Path, report_path: Path, db: DuckDBConfig, progress=None,
    details_path: Path | None = None,
) -> dict:
    """Run the stage. Writes the headline report (`headline_report`) to `report_path`
    and, given `details_path`, the per-table counts there; returns the details."""
    source = Path(source)
    specs = load_table_spec(table_spec)
    con = connect(db)
    files = check_sources(source, specs, con)
    tables: dict[str, TableReport] = {}
    with atomic_dir(out) as staging_out:
        spill = staging_out / "_spill"
        staging = staging_out / "_staging"
        try:
            con.execute(f"SET temp_directory = {quote_path(spill)}")
            staging.mkdir()

            def work(cursor: duckdb.DuckDBPyConnection, spec: TableSpec) -> TableReport:
                if progress:
                    progress(spec.name)
                return ingest_table(cursor, spec, files[spec.name], source, staging_out, staging)

            # Two tables at once where DuckDB may use two threads (see corpus.ingest.schedule).
            tables = run_tables(con, specs, files, work, workers=2 if db.threads > 1 else 1)
        finally:
            con.close()  # before the folder goes (on failure too): DuckDB may hold spill files in it
        for leftover in (staging, spill):
            if leftover.exists():
                for child in leftover.iterdir():
                    child.unlink()
                leftover.rmdir()
        missing_optional = sorted(s.name for s in specs if s.name not in files)
        manifest = {
            "source": str(source),
            "table_spec": str(table_spec),
            "tables": {name: vars(r) for name, r in tables.items()},
            "missing_optional_tables": missing_optional,
        }
        write_json(staging_out / "manifest.json", manifest)
        details = {
            "tables": {
                name: {
                    "rows_read": r.rows_read,
                    "rows_written": r.rows_written,
                    "rows_excluded": r.rows_read - r.rows_written,
                    "excluded": r.excluded,
                    "invalid_values": r.invalid_values,
                }
                for name, r in tables.items()
            },
            "rows_excluded_total": sum(r.rows_read - r.rows_written for r in tables.values()),
            "invalid_values_total": sum(sum(r.invalid_values.values()) for r in tables.values()),
            "missing_optional_tables": missing_optional,
        }
    if details_path is not None:
        write_json(details_path, details)
    # The report goes last: it exists only when the warehouse it describes does.
    write_json(report_path, headline_report(details))
    return details
