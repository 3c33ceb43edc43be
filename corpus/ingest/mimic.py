"""The `ingest` stage for MIMIC-IV: source files -> typed, checked parquet.

For each table of the spec: find the file (csv, csv.gz or parquet), check that
every listed column is there, read only those columns with DuckDB, cast them to
the spec's types, and split the rows into kept and excluded (a value that does
not parse in a column the cohorts rely on, a null key, or a row rule, with the
reason). Nothing is dropped silently: excluded rows are written with their
reason and source row number; other values that do not parse are kept as null,
counted and logged. A required table without rows, or an unparseable value in
a column the spec marks strict, stops the stage with an error naming the file.

Output layout (written to a temporary folder and swapped in only when complete):

    <out>/<table>.parquet            kept rows, typed
    <out>/excluded/<table>.parquet   excluded rows, raw text, with `_reason` and `_row`
    <out>/manifest.json              source files, row counts, warnings

and two JSON files: the report (DVC metrics: the headline counts, exclusions per
table and reason) and, optionally, the details (per-table counts).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import duckdb

from corpus.atomic import atomic_dir, write_json
from corpus.config import DuckDBConfig
from corpus.db import connect, quote_ident, quote_literal, quote_path
from corpus.errors import SourceError
from corpus.ingest.table_spec import TableSpec, load_table_spec

log = logging.getLogger(__name__)

SUFFIXES = (".parquet", ".csv.gz", ".csv")


@dataclass
class TableReport:
    file: str
    rows_read: int = 0
    rows_written: int = 0
    excluded: dict[str, int] = field(default_factory=dict)
    invalid_values: dict[str, int] = field(default_factory=dict)


def find_table_file(source: Path, spec: TableSpec) -> Path | None:
    """The file holding `spec` under `source`: <folder>/<table>.{parquet,csv.gz,csv}."""
    for suffix in SUFFIXES:
        candidate = source / spec.folder / f"{spec.name}{suffix}"
        if candidate.is_file():
            return candidate
    return None


def _reader(path: Path) -> str:
    """A DuckDB table function reading every column of `path` as stored (csv: as text)."""
    if path.name.endswith(".parquet"):
        return f"read_parquet({quote_path(path)})"
    # all_varchar: we cast ourselves, so a bad value is counted, not a crash
    # halfway through a 100 M-row file; ICD codes keep their leading zeros.
    return f"read_csv({quote_path(path)}, header = true, all_varchar = true, auto_detect = true)"


def _columns_of(con: duckdb.DuckDBPyConnection, path: Path) -> list[str]:
    try:
        return [row[0] for row in con.execute(f"DESCRIBE SELECT * FROM {_reader(path)}").fetchall()]
    except duckdb.Error as exc:
        raise SourceError(f"{path}: cannot read the file as a table: {exc}") from exc


def _parsed_columns(spec: TableSpec) -> list[str]:
    """Columns whose values are cast (VARCHAR columns take any text)."""
    return [c for c, t in spec.columns.items() if t != "VARCHAR"]


def unparsed_reason(spec: TableSpec, column: str) -> str:
    return f"{column} does not parse as {spec.columns[column]}"


def _typed_select(spec: TableSpec, path: Path) -> str:
    """SELECT of the spec's columns with their types, plus `_row` (1 = the first row after
    the header), `_reason` (null: kept) and `_bad_<col>` flags."""
    typed = []
    bad_flags = []
    for column, sql_type in spec.columns.items():
        raw = quote_ident(column)
        typed.append(f"TRY_CAST({raw} AS {sql_type}) AS {raw}")
        if sql_type != "VARCHAR":
            bad_flags.append(
                f"({raw} IS NOT NULL AND TRY_CAST({raw} AS {sql_type}) IS NULL) AS {quote_ident('_bad_' + column)}"
            )
    # The source text of each value is kept only where it is read again: excluded rows (written
    # as they stood) and strict columns that fail (named in the error). Copying it for every
    # row cost a third of the staging pass on a 15 M-row table.
    source_columns = ", ".join(f"{quote_ident(c)} AS {quote_ident('_src_' + c)}" for c in spec.columns)
    # An unparseable value first: a key that does not parse reads as null, and its
    # reason should say what was there, not "null".
    cases = [f"WHEN {quote_ident('_bad_' + c)} THEN {quote_literal(unparsed_reason(spec, c))}"
             for c in _parsed_columns(spec) if spec.unparsed_action(c) == "exclude"]
    cases += [f"WHEN {quote_ident(k)} IS NULL THEN 'null {k}'" for k in spec.keys]
    cases += [f"WHEN {rule.when} THEN {quote_literal(rule.reason)}" for rule in spec.row_rules]
    reason = f"CASE {' '.join(cases)} ELSE NULL END" if cases else "NULL"
    keep_raw = " OR ".join(["_reason IS NOT NULL"] + [quote_ident("_bad_" + c) for c in _parsed_columns(spec)
                                                        if spec.unparsed_action(c) == "strict"])
    raw_columns = ", ".join(
        f"CASE WHEN {keep_raw} THEN CAST({quote_ident('_src_' + c)} AS VARCHAR) END AS {quote_ident('_raw_' + c)}"
        for c in spec.columns
    )
    kept = ", ".join(["_row", *(quote_ident(c) for c in spec.columns),
                      *(quote_ident("_bad_" + c) for c in _parsed_columns(spec)), "_reason"])
    projected = ", ".join(quote_ident(c) for c in spec.columns)
    # row_number() over the scan follows the file (DuckDB keeps insertion order).
    return f"""
        WITH raw AS (SELECT row_number() OVER () AS _row, {projected} FROM {_reader(path)}),
        typed AS (SELECT _row, {', '.join(typed + bad_flags)}, {source_columns} FROM raw),
        reasoned AS (SELECT *, {reason} AS _reason FROM typed)
        SELECT {kept}, {raw_columns} FROM reasoned
    """


def _check_strict(con: duckdb.DuckDBPyConnection, spec: TableSpec, path: Path, staged: Path) -> None:
    """Raise on the first strict column holding a value that does not parse, naming rows and values."""
    for column in _parsed_columns(spec):
        if spec.unparsed_action(column) != "strict":
            continue
        flag = quote_ident("_bad_" + column)
        count = con.execute(f"SELECT count(*) FROM read_parquet({quote_path(staged)}) WHERE {flag}").fetchone()[0]
        if not count:
            continue
        examples = con.execute(
            f"SELECT _row, {quote_ident('_raw_' + column)} FROM read_parquet({quote_path(staged)}) "
            f"WHERE {flag} ORDER BY _row LIMIT 5"
        ).fetchall()
        rows = ", ".join(f"{row} ({value!r})" for row, value in examples)
        raise SourceError(
            f"{path}: table {spec.name}, column {column} (strict in the table spec): {count} value(s) do not parse "
            f"as {spec.columns[column]}; rows {rows}{' ...' if count > len(examples) else ''} "
            "(row 1 = the first row after the header)"
        )


def _ingest_table(
    con: duckdb.DuckDBPyConnection, spec: TableSpec, path: Path, source: Path, out: Path, staging: Path
) -> TableReport:
    report = TableReport(file=path.relative_to(source).as_posix())
    staged = staging / f"{spec.name}.parquet"
    try:
        con.execute(f"COPY ({_typed_select(spec, path)}) TO {quote_path(staged)} (FORMAT parquet)")
    except duckdb.Error as exc:
        raise SourceError(f"{path}: reading table {spec.name} failed: {exc}") from exc
    _check_strict(con, spec, path, staged)

    columns = ", ".join(quote_ident(c) for c in spec.columns)
    # Sorted output: same source, same bytes.
    con.execute(
        f"COPY (SELECT {columns} FROM read_parquet({quote_path(staged)}) WHERE _reason IS NULL ORDER BY {columns}) "
        f"TO {quote_path(out / f'{spec.name}.parquet')} (FORMAT parquet)"
    )
    raw_columns = ", ".join(f"{quote_ident('_raw_' + c)} AS {quote_ident(c)}" for c in spec.columns)
    excluded_count = con.execute(
        f"SELECT count(*) FROM read_parquet({quote_path(staged)}) WHERE _reason IS NOT NULL"
    ).fetchone()[0]
    if excluded_count:
        (out / "excluded").mkdir(exist_ok=True)
        con.execute(
            f"COPY (SELECT _reason, _row, {raw_columns} FROM read_parquet({quote_path(staged)}) "
            f"WHERE _reason IS NOT NULL ORDER BY ALL) "
            f"TO {quote_path(out / 'excluded' / f'{spec.name}.parquet')} (FORMAT parquet)"
        )

    # Values kept as null: unparseable ones in kept rows, in columns that neither
    # exclude their row nor stop the stage.
    warn_columns = [c for c in _parsed_columns(spec) if spec.unparsed_action(c) == "warn"]
    bad_sums = ", ".join(
        f"count(*) FILTER (WHERE _reason IS NULL AND {quote_ident('_bad_' + c)})" for c in warn_columns
    )
    totals = con.execute(
        f"SELECT count(*), count(*) FILTER (WHERE _reason IS NULL){', ' + bad_sums if bad_sums else ''} "
        f"FROM read_parquet({quote_path(staged)})"
    ).fetchone()
    report.rows_read, report.rows_written = int(totals[0]), int(totals[1])
    if report.rows_read == 0:
        if spec.required:
            raise SourceError(f"{path}: required table {spec.name} has no rows (a header only): nothing to build on")
        log.warning("%s: optional table %s has no rows", path, spec.name)
    report.invalid_values = {c: int(n or 0) for c, n in zip(warn_columns, totals[2:]) if n}
    for column, count in report.invalid_values.items():
        log.warning("%s: %d value(s) of column %s do not parse as %s: kept as null", path, count, column,
                    spec.columns[column])
    report.excluded = {
        reason: int(n)
        for reason, n in con.execute(
            f"SELECT _reason, count(*) FROM read_parquet({quote_path(staged)}) "
            "WHERE _reason IS NOT NULL GROUP BY _reason ORDER BY _reason"
        ).fetchall()
    }
    staged.unlink()
    # Later row rules refer to this table by name (e.g. admissions -> patients).
    con.execute(
        f"CREATE OR REPLACE VIEW {quote_ident(spec.name)} AS "
        f"SELECT * FROM read_parquet({quote_path(out / f'{spec.name}.parquet')})"
    )
    return report


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
            for spec in specs:
                if spec.name not in files:
                    continue
                if progress:
                    progress(spec.name)
                tables[spec.name] = _ingest_table(con, spec, files[spec.name], source, staging_out, staging)
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
