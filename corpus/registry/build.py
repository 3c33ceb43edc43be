"""Registry tables: build the sepsis registry from the challenge files, and load any registry against its spec.

A registry is one row per patient (or stay): an id, features, outcomes. The
sepsis registry is built by corpus/sql/registry_sepsis.sql from the hourly
PhysioNet/CinC 2019 files; any other registry (csv or parquet) is used as it
is, given a column spec (corpus.registry.spec). Both paths go through the same
check, so a question builder only ever sees a table its spec describes.
"""

from __future__ import annotations

import logging
from pathlib import Path

import duckdb
import polars as pl

from corpus.atomic import atomic_path
from corpus.config import DuckDBConfig
from corpus.db import connect, quote_ident, quote_literal, quote_path, sql_file
from corpus.errors import ConfigError, SourceError
from corpus.registry.spec import ColumnSpec, RegistrySpec, load_registry_spec

log = logging.getLogger(__name__)

# The header every challenge file must have; registry_sepsis.sql reads the
# columns by position with these names and types, so a file whose header
# differs would be misread silently: it is refused up front instead.
SEPSIS_SOURCE_COLUMNS = (
    "HR", "O2Sat", "Temp", "SBP", "MAP", "DBP", "Resp", "EtCO2", "BaseExcess", "HCO3", "FiO2", "pH",
    "PaCO2", "SaO2", "AST", "BUN", "Alkalinephos", "Calcium", "Chloride", "Creatinine", "Bilirubin_direct",
    "Glucose", "Lactate", "Magnesium", "Phosphate", "Potassium", "Bilirubin_total", "TroponinI", "Hct", "Hgb",
    "PTT", "WBC", "Fibrinogen", "Platelets", "Age", "Gender", "Unit1", "Unit2", "HospAdmTime", "ICULOS",
    "SepsisLabel",
)  # fmt: skip

INTEGER_TYPES = ("TINYINT", "SMALLINT", "INTEGER", "BIGINT", "HUGEINT", "UTINYINT", "USMALLINT", "UINTEGER", "UBIGINT")
NUMBER_TYPES = INTEGER_TYPES + ("FLOAT", "DOUBLE", "REAL")
EXAMPLES = 5  # bad values quoted in an error message


# --- loading any registry ----------------------------------------------------


def _reader(path: Path) -> str:
    """A DuckDB table function for a registry file, by suffix."""
    name = path.name.lower()
    if name.endswith(".parquet"):
        return f"read_parquet({quote_path(path)})"
    if name.endswith((".csv", ".csv.gz", ".tsv", ".tsv.gz")):
        # all_varchar: the spec, not the sniffer, types each column ("yes"/"no"
        # stay categories instead of becoming booleans; a stray word in a numeric
        # column is reported with its value instead of turning it into text).
        return (
            f"read_csv({quote_path(path)}, header = true, all_varchar = true, "
            "nullstr = ['', 'NA', 'NaN', 'nan', 'NULL', 'null'])"
        )
    raise SourceError(f"{path}: unknown registry file type (expected .parquet, .csv or .csv.gz)")


def _base_type(duck_type: str) -> str:
    return duck_type.split("(")[0].upper()


def _as_text(column: str, duck_type: str) -> str:
    """SQL for a categorical value as text: 1, 1.0 and '1' all read '1' (the spec's categories are text)."""
    raw = quote_ident(column)
    base = _base_type(duck_type)
    if base in INTEGER_TYPES:
        return f"CAST({raw} AS VARCHAR)"
    if base in NUMBER_TYPES or base == "DECIMAL":
        number = f"CAST({raw} AS DOUBLE)"
        return (
            # isfinite, not isnan: DuckDB 2.0's isnan misses NaN read from a pyarrow-written parquet
            f"CASE WHEN NOT isfinite({number}) THEN NULL "
            # TRY_CAST: DuckDB evaluates every branch, NaN included
            f"WHEN {number} = round({number}) THEN CAST(TRY_CAST({number} AS BIGINT) AS VARCHAR) "
            f"ELSE CAST({raw} AS VARCHAR) END"
        )
    # text: trimmed, and "1.0" read as "1" (csv written from a float column)
    return f"regexp_replace(trim(CAST({raw} AS VARCHAR)), '^(-?[0-9]+)[.]0+$', '\\1')"


def _bad_values(con, relation: str, condition: str, column: str) -> tuple[int, list[str]]:
    """How many rows match `condition`, and a few of their raw values."""
    count, examples = con.execute(
        f"SELECT count(*), list(DISTINCT CAST({quote_ident(column)} AS VARCHAR) ORDER BY "
        f"CAST({quote_ident(column)} AS VARCHAR))[1:{EXAMPLES}] FROM {relation} WHERE {condition}"
    ).fetchall()[0]
    return int(count), list(examples or [])


def _typed_expression(con, relation: str, source: str, spec: RegistrySpec, column: ColumnSpec, duck_type: str) -> str:
    """SQL giving `column` in its spec type; raises SourceError naming the file and column when values do not fit."""
    raw = quote_ident(column.name)
    where = f"{source}: column {column.name} ({column.type} in {spec.path})"
    base = _base_type(duck_type)
    if column.type == "categorical":
        text = _as_text(column.name, duck_type)
        allowed = column.categories
        if allowed is not None:
            accepted = ", ".join(quote_literal(v) for v in allowed + column.missing_values)
            outside = f"{raw} IS NOT NULL AND ({text}) NOT IN ({accepted})"
            count, examples = _bad_values(con, relation, outside, column.name)
            if count:
                raise SourceError(
                    f"{where}: {count} value(s) outside its categories {list(allowed)}, e.g. {examples}"
                )
        return f"{text} AS {raw}"

    if base not in NUMBER_TYPES + ("DECIMAL", "VARCHAR"):
        raise SourceError(f"{where}: stored as {duck_type}, which is not a number type")
    number = f"TRY_CAST({raw} AS DOUBLE)"
    if column.type == "id":
        count, examples = _bad_values(
            con, relation, f"{raw} IS NULL OR {number} IS NULL OR {number} <> round({number})", column.name
        )
        if count:
            raise SourceError(f"{where}: {count} row(s) without a whole-number id, e.g. {examples or ['NULL']}")
        duplicates = con.execute(
            f"SELECT count(*) FROM (SELECT {number} FROM {relation} GROUP BY 1 HAVING count(*) > 1)"
        ).fetchall()[0][0]
        if duplicates:
            raise SourceError(f"{where}: {duplicates} id value(s) occur on more than one row (one row per patient)")
        return f"CAST({number} AS BIGINT) AS {raw}"

    # numeric: NaN is a missing value (pandas writes it so); text that is no number, or infinity, is an error
    count, examples = _bad_values(
        con, relation, f"{raw} IS NOT NULL AND ({number} IS NULL OR isinf({number}))", column.name
    )
    if count:
        raise SourceError(f"{where}: {count} value(s) are not finite numbers, e.g. {examples}")
    return f"CASE WHEN isfinite({number}) THEN {number} END AS {raw}"  # NaN -> NULL (isnan misses some NaN)


def check_registry(
    con: duckdb.DuckDBPyConnection, relation: str, source: str, spec: RegistrySpec, *, exact: bool = False
) -> pl.DataFrame:
    """The spec's columns of `relation` in spec order and types, sorted by id.

    Types out: id Int64, numeric Float64 (NaN read as null), categorical
    String. `exact`: the table may hold no column the spec does not describe
    (used for tables we build ourselves, so spec and SQL cannot drift apart).
    """
    try:
        described = con.execute(f"DESCRIBE SELECT * FROM {relation}").fetchall()
    except duckdb.Error as exc:
        raise SourceError(f"{source}: cannot read the registry table: {exc}") from exc
    present = {row[0]: str(row[1]) for row in described}
    missing = [name for name in spec.names if name not in present]
    if missing:
        raise SourceError(
            f"{source}: registry table lacks column(s) {', '.join(missing)} named in {spec.path} "
            f"(found: {', '.join(present)})"
        )
    extra = [name for name in present if name not in spec.names]
    if extra and exact:
        raise SourceError(f"{source}: column(s) {', '.join(extra)} are not described in {spec.path}")
    if extra:
        log.info("%s: column(s) not in %s ignored: %s", source, spec.path, ", ".join(extra))
    expressions = [_typed_expression(con, relation, source, spec, c, present[c.name]) for c in spec.columns]
    order = quote_ident(spec.id_column.name)
    frame = con.sql(f"SELECT {', '.join(expressions)} FROM {relation} ORDER BY {order}").pl()
    return frame.cast({c.name: {"id": pl.Int64, "numeric": pl.Float64, "categorical": pl.String}[c.type]
                       for c in spec.columns})


def load_registry(path: Path | str, spec_path: Path | str) -> pl.DataFrame:
    """Any registry table (csv, csv.gz or parquet; one row per patient) checked against its column spec.

    Raises SourceError naming the file and column when a spec column is
    missing, a value does not fit its type or categories, or an id repeats.
    """
    path = Path(path)
    spec = load_registry_spec(spec_path)
    if not path.is_file():
        raise SourceError(f"{path}: registry table not found")
    con = duckdb.connect(":memory:")
    try:
        con.execute(f"CREATE VIEW registry_source AS SELECT * FROM {_reader(path)}")
        return check_registry(con, "registry_source", str(path), spec)
    except duckdb.Error as exc:
        raise SourceError(f"{path}: cannot read the registry table: {exc}") from exc
    finally:
        con.close()


# --- building the sepsis registry --------------------------------------------


def _check_sepsis_files(source_dir: Path) -> list[Path]:
    """The challenge files of `source_dir`, each checked to have the expected header."""
    if not source_dir.is_dir():
        raise SourceError(f"{source_dir}: sepsis challenge folder not found (params.yaml registry.source)")
    files = sorted(source_dir.glob("*.psv"))
    if not files:
        raise SourceError(f"{source_dir}: no .psv files (expected one pipe-separated file per ICU stay)")
    for path in files:
        with open(path, encoding="utf-8") as handle:
            header = tuple(handle.readline().strip().split("|"))
        if header != SEPSIS_SOURCE_COLUMNS:
            missing = [c for c in SEPSIS_SOURCE_COLUMNS if c not in header]
            unexpected = [c for c in header if c not in SEPSIS_SOURCE_COLUMNS]
            detail = (
                f"lacks column(s) {', '.join(missing)}" if missing
                else f"has unexpected column(s) {', '.join(unexpected)}" if unexpected
                else "has the expected columns in another order"
            )
            raise SourceError(f"{path}: header {detail} (expected {'|'.join(SEPSIS_SOURCE_COLUMNS)})")
    return files


def build_sepsis_registry(source_dir: Path, spec_path: Path, out: Path, window_hours: int, db: DuckDBConfig) -> dict:
    """Write the sepsis registry (one row per stay) to `out` as parquet; returns a summary.

    The table is checked against `spec_path` before it is written, and it is
    renamed into place only when complete.
    """
    source_dir, out = Path(source_dir), Path(out)
    if int(window_hours) < 1:
        raise ConfigError(f"params.yaml registry.window_hours: expected whole hours >= 1, found {window_hours}")
    spec = load_registry_spec(spec_path)
    files = _check_sepsis_files(source_dir)
    con = connect(db)
    con.execute("SET enable_progress_bar = false")
    try:
        con.execute(
            f"CREATE TABLE registry AS {sql_file('registry_sepsis')}",
            {"glob": (source_dir / "*.psv").as_posix(), "window_hours": int(window_hours)},
        )
    except duckdb.Error as exc:
        raise SourceError(f"{source_dir}: reading the challenge files failed: {exc}") from exc
    checked = check_registry(con, "registry", f"registry built from {source_dir}", spec, exact=True)
    with atomic_path(out) as tmp:
        con.execute(
            f"COPY (SELECT * FROM registry ORDER BY subject_id) TO {quote_path(tmp)} "
            "(FORMAT parquet, COMPRESSION zstd)"
        )
    con.close()
    return {
        "source_files": len(files),
        "stays": checked.height,
        "sepsis_stays": int(checked["sepsis"].cast(pl.Int64).sum()),
        "window_hours": int(window_hours),
        "columns": len(checked.columns),
    }
