"""The `cohorts` stage: warehouse parquet -> one row per prediction sample, per task.

The label rules live in corpus/sql/label_<task>.sql (one file per rule, edge
cases in its header); this module only binds parameters and writes files.

Output (written to a temporary folder and swapped in only when complete):

    <out>/visits.parquet       qualifying visits with their named lists: the
                               history a question may show (no times, no outcome)
    <out>/<task>.parquet       task, subject_id, hadm_id, visit_index, label,
                               label_convention; the context of a sample is the
                               patient's visits 0..visit_index in visits.parquet

and a summary (samples and labels per task; DVC metrics) at `summary_path`.
"""

from __future__ import annotations

from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from corpus.atomic import atomic_dir, write_json
from corpus.config import CohortConfig, DuckDBConfig
from corpus.db import connect, quote_ident, quote_path, sql_file
from corpus.errors import SourceError

TASKS = ("mortality", "readmission", "los")
WAREHOUSE_TABLES = (
    "patients",
    "admissions",
    "diagnoses_icd",
    "procedures_icd",
    "prescriptions",
    "d_icd_diagnoses",
    "d_icd_procedures",
)
# What a question may see of a visit. Times, discharge data and outcome flags
# stay out: labels are computed from them.
VISIT_COLUMNS = ("subject_id", "hadm_id", "visit_index", "conditions", "procedures", "medications")


def _register_warehouse(con: duckdb.DuckDBPyConnection, warehouse: Path) -> None:
    for table in WAREHOUSE_TABLES:
        path = warehouse / f"{table}.parquet"
        if not path.exists():
            raise SourceError(f"{path}: warehouse table {table} not found (run the ingest stage first)")
        con.execute(f"CREATE VIEW {quote_ident(table)} AS SELECT * FROM read_parquet({quote_path(path)})")


def _write(table: pa.Table, path: Path) -> None:
    pq.write_table(table, path, compression="zstd")


def build_cohorts(
    warehouse: Path, out: Path, summary_path: Path, config: CohortConfig, db: DuckDBConfig
) -> dict:
    """Run the stage; returns the summary also written to `summary_path`."""
    con = connect(db)
    _register_warehouse(con, Path(warehouse))
    # Item lists are built once, as integer ids (item_names.sql, visit_items.sql); the
    # admissions and labels never carry them, and names replace the ids only in the
    # one query that writes visits.parquet.
    con.execute(sql_file("item_names"))
    con.execute(f"CREATE TEMP TABLE visit_items AS {sql_file('visit_items')}")
    con.execute(
        f"CREATE TEMP TABLE cohort_visits AS {sql_file('cohort_visits')}",
        {"adults_only": config.label_convention == "pyhealth"},
    )
    params = {
        "mortality": {},
        "readmission": {"convention": config.label_convention, "readmission_days": config.readmission_days},
        "los": {"los_bins": list(config.los_bins)},
    }
    summary: dict = {"label_convention": config.label_convention, "tasks": {}}
    with atomic_dir(out) as staging:
        visits = con.sql(sql_file("visit_lists")).to_arrow_table()  # VISIT_COLUMNS, in order
        _write(visits, staging / "visits.parquet")
        for task in TASKS:
            rows = con.sql(sql_file(f"label_{task}"), params=params[task]).to_arrow_table()
            rows = rows.add_column(0, "task", pa.array([task] * rows.num_rows, pa.string()))
            rows = rows.append_column(
                "label_convention", pa.array([config.label_convention] * rows.num_rows, pa.string())
            )
            _write(rows, staging / f"{task}.parquet")
            counts = dict(
                con.execute("SELECT label, count(*) FROM rows GROUP BY label ORDER BY label").fetchall()
            )
            summary["tasks"][task] = {
                "samples": rows.num_rows,
                "patients": pc.count_distinct(rows.column("subject_id")).as_py(),
                "by_label": {str(k): int(v) for k, v in counts.items()},
            }
        summary["qualifying_visits"] = visits.num_rows
    con.close()
    write_json(summary_path, summary)
    return summary
