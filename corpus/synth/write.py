"""Write synthetic tables chunk by chunk: one parquet or csv.gz file per table.

Parquet: one row group per chunk (zstd), so memory stays at one chunk and the
bytes depend only on the data. csv.gz: Arrow's CSV writer into a gzip stream
with no timestamp or file name in its header (same data, same bytes), at
level 1, since compressing a hundred million lab rows at gzip's default level
takes far longer than drawing them; `--format parquet` is the fast path.
"""

from __future__ import annotations

import gzip
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from corpus.ingest.table_spec import TableSpec

FORMATS = ("parquet", "csv.gz")
ARROW_TYPES = {
    "BIGINT": pa.int64(), "INTEGER": pa.int32(), "DOUBLE": pa.float64(), "VARCHAR": pa.string(),
    "TIMESTAMP": pa.timestamp("s"), "DATE": pa.date32(),
}
GZIP_LEVEL = 1


def conform(table: pa.Table, spec: TableSpec) -> pa.Table:
    """`table` with the spec's columns in the spec's order and types (strings may stay dictionary-encoded)."""
    columns = []
    for name, sql_type in spec.columns.items():
        column = table.column(name)
        wanted = ARROW_TYPES[sql_type]
        if not (sql_type == "VARCHAR" and pa.types.is_dictionary(column.type)) and column.type != wanted:
            column = column.cast(wanted)
        columns.append(column)
    return pa.table(columns, names=list(spec.columns))


class TableWriter:
    """Appends tables of one schema to <folder>/<name>.<format>."""

    def __init__(self, folder: Path, spec: TableSpec, fmt: str) -> None:
        if fmt not in FORMATS:
            raise ValueError(f"format {fmt!r}: expected one of {', '.join(FORMATS)}")
        self.spec, self.fmt = spec, fmt
        self.path = folder / spec.folder / f"{spec.name}.{fmt}"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.rows = 0
        self._writer = None
        self._file = None

    def write(self, table: pa.Table) -> None:
        table = conform(table, self.spec)
        if self.fmt == "csv.gz":
            # The CSV writer takes plain strings; decoding costs little next to gzip.
            table = pa.table([c.cast(pa.string()) if pa.types.is_dictionary(c.type) else c for c in table.columns],
                             names=table.column_names)
            if self._writer is None:
                raw = open(self.path, "wb")
                self._file = gzip.GzipFile(filename="", mode="wb", fileobj=raw, compresslevel=GZIP_LEVEL, mtime=0)
                self._raw = raw
                self._writer = pacsv.CSVWriter(self._file, table.schema)
        elif self._writer is None:
            # Times and lab values are nearly unique per row: a dictionary page for them is
            # built only to be dropped (a fifth of labevents' write time).
            repeating = [c for c, t in self.spec.columns.items() if t not in ("TIMESTAMP", "DOUBLE")]
            self._writer = pq.ParquetWriter(self.path, table.schema, compression="zstd", use_dictionary=repeating)
        self._writer.write_table(table)
        self.rows += table.num_rows

    def close(self, empty: pa.Table | None = None) -> None:
        """Finish the file; a table that got no rows is written with its header only (`empty`)."""
        if self._writer is None and empty is not None:
            self.write(empty)
        if self._writer is not None:
            self._writer.close()
        if self._file is not None:
            self._file.close()
            self._raw.close()


def empty_table(spec: TableSpec) -> pa.Table:
    return pa.table({c: pa.array([], ARROW_TYPES[t]) for c, t in spec.columns.items()})
