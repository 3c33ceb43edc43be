"""One table of the ingest spec: source file -> typed, sorted parquet plus its counts.

Two ways through a table, with the same outputs:

- the quick one (`_ingest_clean`): one scan types every value and folds what the
  careful way needs to know (which warn columns do not parse, whether any row is
  excluded or a strict column fails) into a one-byte mask per row, kept in a
  DuckDB temporary table; the sorted parquet is written from that table. It
  serves a table in which no row is excluded and no strict value fails, which a
  sound source is, table after table.
- the careful one (`_ingest_careful`), taken as soon as the quick scan finds one
  such row: it numbers the source rows and keeps the source text of the rows it
  must show (excluded rows, strict failures), stages them to parquet and writes
  excluded/<table>.parquet. Numbering the rows needs a window over the whole
  file and keeping the text costs a second copy, so the quick scan skips both.

Both build their typed values, flags and reasons from the same SQL pieces, so a
value is read the same way whichever path the table takes.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import duckdb

from corpus.db import quote_ident, quote_literal, quote_path
from corpus.errors import SourceError
from corpus.ingest.table_spec import TableSpec

log = logging.getLogger(__name__)


@dataclass
class TableReport:
    file: str
    rows_read: int = 0
    rows_written: int = 0
    excluded: dict[str, int] = field(default_factory=dict)
    invalid_values: dict[str, int] = field(default_factory=dict)


def _reader(path: Path) -> str:
    """A DuckDB table function reading every column of `path` as stored (csv: as text)."""
    if path.name.endswith(".parquet"):
        return f"read_parquet({quote_path(path)})"
    # all_varchar: we cast ourselves, so a bad value is counted, not a crash
    # halfway through a 100 M-row file; ICD codes keep their leading zeros.
    return f"read_csv({quote_path(path)}, header = true, all_varchar = true, auto_detect = true)"


def _parsed_columns(spec: TableSpec) -> list[str]:
    """Columns whose values are cast (VARCHAR columns take any text)."""
    return [c for c, t in spec.columns.items() if t != "VARCHAR"]


def _warn_columns(spec: TableSpec) -> list[str]:
    """Parsed columns whose unparseable values are kept as null and counted."""
    return [c for c in _parsed_columns(spec) if spec.unparsed_action(c) == "warn"]


def unparsed_reason(spec: TableSpec, column: str) -> str:
    return f"{column} does not parse as {spec.columns[column]}"


def _typed_and_flags(spec: TableSpec) -> tuple[list[str], list[str]]:
    """The typed value of each column, and the `_bad_<col>` flag of each parsed one."""
    typed, bad_flags = [], []
    for column, sql_type in spec.columns.items():
        raw = quote_ident(column)
        typed.append(f"TRY_CAST({raw} AS {sql_type}) AS {raw}")
        if sql_type != "VARCHAR":
            bad_flags.append(
                f"({raw} IS NOT NULL AND TRY_CAST({raw} AS {sql_type}) IS NULL) AS {quote_ident('_bad_' + column)}"
            )
    return typed, bad_flags


def _reason(spec: TableSpec) -> str:
    """The exclusion reason of a typed row (null: kept); the first matching case names it."""
    # An unparseable value first: a key that does not parse reads as null, and its
    # reason should say what was there, not "null".
    cases = [f"WHEN {quote_ident('_bad_' + c)} THEN {quote_literal(unparsed_reason(spec, c))}"
             for c in _parsed_columns(spec) if spec.unparsed_action(c) == "exclude"]
    cases += [f"WHEN {quote_ident(k)} IS NULL THEN 'null {k}'" for k in spec.keys]
    cases += [f"WHEN {rule.when} THEN {quote_literal(rule.reason)}" for rule in spec.row_rules]
    return f"CASE {' '.join(cases)} ELSE NULL END" if cases else "NULL"


def _strict_flags(spec: TableSpec) -> list[str]:
    return [quote_ident("_bad_" + c) for c in _parsed_columns(spec) if spec.unparsed_action(c) == "strict"]


def _typed_select(spec: TableSpec, path: Path) -> str:
    """SELECT of the spec's columns with their types, plus `_row` (1 = the first row after
    the header), `_reason` (null: kept) and `_bad_<col>` flags."""
    typed, bad_flags = _typed_and_flags(spec)
    # The source text of each value is kept only where it is read again: excluded rows (written
    # as they stood) and strict columns that fail (named in the error). Copying it for every
    # row cost a third of the staging pass on a 15 M-row table.
    source_columns = ", ".join(f"{quote_ident(c)} AS {quote_ident('_src_' + c)}" for c in spec.columns)
    keep_raw = " OR ".join(["_reason IS NOT NULL", *_strict_flags(spec)])
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
        reasoned AS (SELECT *, {_reason(spec)} AS _reason FROM typed)
        SELECT {kept}, {raw_columns} FROM reasoned
    """


def _mask_type(bits: int) -> str:
    for sql_type, width in (("UTINYINT", 8), ("USMALLINT", 16), ("UINTEGER", 32), ("UBIGINT", 64)):
        if bits <= width:
            return sql_type
    raise SourceError(f"{bits - 1} columns that keep unparseable values as null: at most 63 fit the row mask")


def _masked_select(spec: TableSpec, path: Path) -> str:
    """SELECT of the spec's typed columns plus `_mask`: bit i set where the i-th warn column's
    value does not parse, the top bit where the row is excluded or a strict column fails."""
    typed, bad_flags = _typed_and_flags(spec)
    warn = _warn_columns(spec)
    careful = " OR ".join(["_reason IS NOT NULL", *_strict_flags(spec)])
    terms = [f"CASE WHEN {quote_ident('_bad_' + c)} THEN {1 << i} ELSE 0 END" for i, c in enumerate(warn)]
    terms.append(f"CASE WHEN {careful} THEN {1 << len(warn)} ELSE 0 END")
    mask = f"CAST({' + '.join(terms)} AS {_mask_type(len(warn) + 1)})"
    projected = ", ".join(quote_ident(c) for c in spec.columns)
    columns = ", ".join(quote_ident(c) for c in spec.columns)
    return f"""
        WITH raw AS (SELECT {projected} FROM {_reader(path)}),
        typed AS (SELECT {', '.join(typed + bad_flags)} FROM raw),
        reasoned AS (SELECT *, {_reason(spec)} AS _reason FROM typed)
        SELECT {columns}, {mask} AS _mask FROM reasoned
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


def _write_kept(con: duckdb.DuckDBPyConnection, spec: TableSpec, relation: str, where: str, out: Path) -> None:
    columns = ", ".join(quote_ident(c) for c in spec.columns)
    # Sorted output: same source, same bytes.
    con.execute(
        f"COPY (SELECT {columns} FROM {relation}{where} ORDER BY {columns}) "
        f"TO {quote_path(out / f'{spec.name}.parquet')} (FORMAT parquet)"
    )


def _ingest_careful(
    con: duckdb.DuckDBPyConnection, spec: TableSpec, path: Path, report: TableReport, out: Path, staging: Path
) -> None:
    staged = staging / f"{spec.name}.parquet"
    try:
        con.execute(f"COPY ({_typed_select(spec, path)}) TO {quote_path(staged)} (FORMAT parquet)")
    except duckdb.Error as exc:
        raise SourceError(f"{path}: reading table {spec.name} failed: {exc}") from exc
    _check_strict(con, spec, path, staged)
    staged_sql = f"read_parquet({quote_path(staged)})"
    _write_kept(con, spec, staged_sql, " WHERE _reason IS NULL", out)
    raw_columns = ", ".join(f"{quote_ident('_raw_' + c)} AS {quote_ident(c)}" for c in spec.columns)
    excluded_count = con.execute(f"SELECT count(*) FROM {staged_sql} WHERE _reason IS NOT NULL").fetchone()[0]
    if excluded_count:
        (out / "excluded").mkdir(exist_ok=True)
        con.execute(
            f"COPY (SELECT _reason, _row, {raw_columns} FROM {staged_sql} "
            f"WHERE _reason IS NOT NULL ORDER BY ALL) "
            f"TO {quote_path(out / 'excluded' / f'{spec.name}.parquet')} (FORMAT parquet)"
        )
    # Values kept as null: unparseable ones in kept rows, in columns that neither
    # exclude their row nor stop the stage.
    warn = _warn_columns(spec)
    bad_sums = "".join(f", count(*) FILTER (WHERE _reason IS NULL AND {quote_ident('_bad_' + c)})" for c in warn)
    totals = con.execute(f"SELECT count(*), count(*) FILTER (WHERE _reason IS NULL){bad_sums} FROM {staged_sql}"
                         ).fetchone()
    report.rows_read, report.rows_written = int(totals[0]), int(totals[1])
    report.invalid_values = {c: int(n or 0) for c, n in zip(warn, totals[2:]) if n}
    report.excluded = {
        reason: int(n)
        for reason, n in con.execute(
            f"SELECT _reason, count(*) FROM {staged_sql} WHERE _reason IS NOT NULL GROUP BY _reason ORDER BY _reason"
        ).fetchall()
    }
    staged.unlink()


def _ingest_clean(con: duckdb.DuckDBPyConnection, spec: TableSpec, path: Path, report: TableReport,
                  out: Path) -> bool:
    """The quick way; False (nothing written) when a row needs the careful one, or the table is empty."""
    table = quote_ident(f"__ingest_{spec.name}")
    try:
        con.execute(f"CREATE TEMP TABLE {table} AS {_masked_select(spec, path)}")
    except duckdb.Error as exc:
        raise SourceError(f"{path}: reading table {spec.name} failed: {exc}") from exc
    try:
        warn = _warn_columns(spec)
        careful = 1 << len(warn)
        sums = "".join(f", count(*) FILTER (WHERE _mask & {1 << i} <> 0)" for i in range(len(warn)))
        totals = con.execute(f"SELECT count(*), count(*) FILTER (WHERE _mask >= {careful}){sums} FROM {table}"
                             ).fetchone()
        # An empty table too: written from a temporary table, its parquet would declare every
        # column REQUIRED (no row holds a null), where the staged path writes OPTIONAL.
        if totals[1] or not totals[0]:
            return False
        _write_kept(con, spec, table, "", out)
        report.rows_read = report.rows_written = int(totals[0])
        report.invalid_values = {c: int(n) for c, n in zip(warn, totals[2:]) if n}
        return True
    finally:
        con.execute(f"DROP TABLE {table}")


def ingest_table(
    con: duckdb.DuckDBPyConnection, spec: TableSpec, path: Path, source: Path, out: Path, staging: Path
) -> TableReport:
    """Write <out>/<table>.parquet (and excluded/<table>.parquet where rows are left out);
    the counts go in the returned report."""
    report = TableReport(file=path.relative_to(source).as_posix())
    if not _ingest_clean(con, spec, path, report, out):
        _ingest_careful(con, spec, path, report, out, staging)
    if report.rows_read == 0:
        if spec.required:
            raise SourceError(f"{path}: required table {spec.name} has no rows (a header only): nothing to build on")
        log.warning("%s: optional table %s has no rows", path, spec.name)
    for column, count in report.invalid_values.items():
        log.warning("%s: %d value(s) of column %s do not parse as %s: kept as null", path, count, column,
                    spec.columns[column])
    # Later row rules refer to this table by name (e.g. admissions -> patients).
    con.execute(
        f"CREATE OR REPLACE VIEW {quote_ident(spec.name)} AS "
        f"SELECT * FROM read_parquet({quote_path(out / f'{spec.name}.parquet')})"
    )
    return report
