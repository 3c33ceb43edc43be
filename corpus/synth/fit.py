"""Fit the generator to a MIMIC-IV-shaped source (`--like`): templates, pools and frequencies.

The source is read the way `ingest` reads it: the same table spec, the same
file lookup and column check (a missing required table or column stops with
the same error naming the file), values cast to the spec's types. Optional
tables the source lacks (labevents, icustays, d_labitems, d_items) read as
empty: the generator then writes none of them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from corpus.config import DuckDBConfig
from corpus.db import connect, quote_ident, sql_file
from corpus.errors import SourceError
from corpus.ingest.mimic import _reader, check_sources
from corpus.ingest.table_spec import TableSpec, load_table_spec

# What the fit reads; the dictionaries are copied to the output as they are.
EVENT_TABLES = ("patients", "admissions", "diagnoses_icd", "procedures_icd", "prescriptions", "labevents", "icustays")
DICTIONARIES = ("d_icd_diagnoses", "d_icd_procedures", "d_labitems", "d_items")
# Sources up to this many rows per table draw through a lookup table (int32: 64 MB at most).
LOOKUP_MAX = 16_000_000
ADMISSION_CATEGORIES = ("admission_type", "admission_location", "discharge_location", "insurance", "race")


@dataclass
class Frequencies:
    """Observed values (an Arrow table, one row per combination) and the cumulative counts to draw from."""

    values: pa.Table
    cumulative: np.ndarray  # int64, cumulative row counts, same order as `values`
    _lookup: np.ndarray | None = field(default=None, repr=False)

    @property
    def total(self) -> int:
        return int(self.cumulative[-1]) if len(self.cumulative) else 0

    def draw(self, rng: np.random.Generator, size: int) -> np.ndarray:
        """Indices into `values`, each with probability count / total.

        One uniform integer below the total per draw, mapped to its value by a
        table of one entry per source row (a gather, several times faster than
        bisecting the cumulative counts); a source too large for that table
        bisects instead, with the same result.
        """
        ticket = rng.integers(0, self.total, size)
        if self.total > LOOKUP_MAX:
            return np.searchsorted(self.cumulative, ticket, side="right").astype(np.int32)
        if self._lookup is None:
            counts = np.diff(self.cumulative, prepend=0)
            self._lookup = np.repeat(np.arange(len(counts), dtype=np.int32), counts)
        return self._lookup[ticket]


@dataclass
class SourceFit:
    source: str
    patients: pa.Table          # synth_patients.sql
    admissions: pa.Table        # synth_admissions.sql
    diagnoses: Frequencies
    procedures: Frequencies
    drugs: Frequencies
    careunits: Frequencies
    labitems: pa.Table          # synth_labitems.sql
    dictionaries: dict[str, pa.Table]  # present dictionaries, spec columns, sorted by key
    present: frozenset[str]     # source tables found (optional ones may be missing)
    specs: dict[str, TableSpec]

    def column(self, table: str, name: str) -> np.ndarray:
        return getattr(self, table).column(name).to_numpy(zero_copy_only=False)


def _typed_view(con: duckdb.DuckDBPyConnection, spec: TableSpec, path: Path | None) -> None:
    """A view named like the table, with the spec's columns cast as ingest casts them
    (an unparseable value reads as NULL); an absent optional table is an empty view."""
    columns = ", ".join(
        f"TRY_CAST({quote_ident(c)} AS {t}) AS {quote_ident(c)}" if path is not None
        else f"CAST(NULL AS {t}) AS {quote_ident(c)}"
        for c, t in spec.columns.items()
    )
    body = f"SELECT {columns} FROM {_reader(path)}" if path is not None else f"SELECT {columns} WHERE false"
    con.execute(f"CREATE VIEW {quote_ident(spec.name)} AS {body}")


def _frequencies(table: pa.Table, kind: str, names: tuple[str, ...], types: tuple[pa.DataType, ...]) -> Frequencies:
    rows = table.filter(pc.equal(table.column("kind"), kind))
    columns = {name: rows.column(letter).cast(type_) for name, letter, type_ in zip(names, "abcd", types)}
    return Frequencies(pa.table(columns), np.cumsum(rows.column("n").to_numpy()).astype(np.int64))


def fit_source(source: Path, table_spec: Path, db: DuckDBConfig) -> SourceFit:
    """Read `source` (hosp/ and icu/ as ingest expects them) and return what the generator draws from."""
    source = Path(source)
    specs = {s.name: s for s in load_table_spec(table_spec)}
    unknown = [t for t in EVENT_TABLES + DICTIONARIES if t not in specs]
    if unknown:
        raise SourceError(f"{table_spec}: the table spec lacks table(s) {', '.join(unknown)} that synth writes")
    wanted = [specs[t] for t in EVENT_TABLES + DICTIONARIES]
    con = connect(db)
    try:
        found = check_sources(source, wanted, con)
        for spec in wanted:
            _typed_view(con, spec, found.get(spec.name))
        patients = con.sql(sql_file("synth_patients")).to_arrow_table()
        if patients.num_rows == 0:
            raise SourceError(f"{found['patients']}: no patient with subject_id, anchor_age and anchor_year: "
                              "nothing to fit the generator to")
        admissions = con.sql(sql_file("synth_admissions")).to_arrow_table()
        if admissions.num_rows == 0:
            raise SourceError(f"{found['admissions']}: no valid admission (keys present, dischtime not before "
                              "admittime) of a kept patient: nothing to fit the generator to")
        freq = con.sql(sql_file("synth_frequencies")).to_arrow_table()
        labitems = con.sql(sql_file("synth_labitems")).to_arrow_table()
        dictionaries = {}
        for name in DICTIONARIES:
            if name not in found:
                continue
            spec = specs[name]
            keys = ", ".join(quote_ident(k) for k in spec.keys)
            dictionaries[name] = con.sql(
                f"SELECT * FROM {quote_ident(name)} WHERE {' AND '.join(f'{quote_ident(k)} IS NOT NULL' for k in spec.keys)} "
                f"ORDER BY {keys}"
            ).to_arrow_table()
    finally:
        con.close()
    for name, column in (("diagnoses_icd", "dx"), ("procedures_icd", "px"), ("prescriptions", "rx")):
        if not len(freq.filter(pc.equal(freq.column("kind"), column))):
            raise SourceError(f"{found[name]}: table {name} has no usable rows: nothing to draw its values from")
    return SourceFit(
        source=str(source),
        patients=patients,
        admissions=admissions,
        diagnoses=_frequencies(freq, "dx", ("icd_code", "icd_version"), (pa.string(), pa.int32())),
        procedures=_frequencies(freq, "px", ("icd_code", "icd_version"), (pa.string(), pa.int32())),
        drugs=_frequencies(freq, "rx", ("drug", "drug_type", "ndc", "route"), (pa.string(),) * 4),
        careunits=_frequencies(freq, "unit", ("first_careunit",), (pa.string(),)),
        labitems=labitems,
        dictionaries=dictionaries,
        present=frozenset(found),
        specs=specs,
    )
