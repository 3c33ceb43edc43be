"""Where ingest's time goes: per table, rows, source MB, when it started and ended, seconds and rows/s.

    python bench/ingest_profile.py --source /path/to/mimic-iv [--threads 2] [--memory-limit 4GB] [--out DIR]

Runs the real ingest (corpus.ingest.mimic.ingest_mimic, the code `stages/ingest.py`
runs) into a scratch folder and prints one line per table, then the whole run's
wall seconds, CPU seconds (user + system, this process: DuckDB's threads
included), peak RSS and the load average before and after (the machine may be
shared: CPU seconds are the steadier figure). Two tables run at once
(corpus.ingest.schedule), so a table's seconds overlap another's: `start` and
`end` show how. `--statements` adds every SQL statement over 0.2 s with its
seconds, to see which step of a table holds it.
"""

from __future__ import annotations

import argparse
import os
import re
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from corpus import db as db_mod  # noqa: E402
from corpus.config import DuckDBConfig  # noqa: E402
from corpus.ingest import mimic  # noqa: E402


class _TimedConnection:
    """A DuckDB connection whose cursors' statements are timed (bench instrumentation only)."""

    def __init__(self, con, log: list):
        self._con, self._log = con, log

    def execute(self, sql: str, *args):
        started = time.perf_counter()
        result = self._con.execute(sql, *args)
        self._log.append((time.perf_counter() - started, " ".join(sql.split())))
        return result

    def cursor(self):
        return _TimedConnection(self._con.cursor(), self._log)

    def __getattr__(self, name):
        return getattr(self._con, name)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", type=Path, required=True, help="MIMIC-IV folder (hosp/, icu/)")
    parser.add_argument("--table-spec", type=Path, default=REPO / "schemas" / "mimic_tables.yaml")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--memory-limit", default="4GB")
    parser.add_argument("--out", type=Path, help="scratch folder (default: a temporary one, removed after)")
    parser.add_argument("--statements", action="store_true", help="also list SQL statements over 0.2 s")
    args = parser.parse_args()

    scratch = Path(args.out or tempfile.mkdtemp(prefix="ingest_profile_"))
    spans: dict[str, list[float]] = {}
    statements: list = []
    run_table = mimic.ingest_table
    connect = db_mod.connect
    t0 = time.perf_counter()

    def timed_table(con, spec, *rest):
        spans[spec.name] = [time.perf_counter() - t0]
        report = run_table(con, spec, *rest)
        spans[spec.name].append(time.perf_counter() - t0)
        return report

    mimic.ingest_table = timed_table
    if args.statements:
        mimic.connect = lambda config: _TimedConnection(connect(config), statements)
    load_before = Path("/proc/loadavg").read_text().split()[:3]
    cpu_before = os.times()
    try:
        details = mimic.ingest_mimic(args.source, args.table_spec, scratch / "mimic", scratch / "report.json",
                                     DuckDBConfig(memory_limit=args.memory_limit, threads=args.threads))
        wall = time.perf_counter() - t0
        cpu_after = os.times()
    finally:
        if args.out is None:
            shutil.rmtree(scratch, ignore_errors=True)
    load_after = Path("/proc/loadavg").read_text().split()[:3]

    print(f"{'table':18s} {'rows':>12s} {'source MB':>10s} {'start':>7s} {'end':>7s} {'seconds':>8s} {'rows/s':>11s}")
    total_rows = 0
    for name, entry in details["tables"].items():
        start, end = spans[name]
        path = mimic.find_table_file(args.source, next(s for s in mimic.load_table_spec(args.table_spec)
                                                        if s.name == name))
        rows = entry["rows_read"]
        total_rows += rows
        print(f"{name:18s} {rows:12,d} {path.stat().st_size / 1e6:10.1f} {start:7.2f} {end:7.2f} {end - start:8.2f} "
              f"{rows / max(end - start, 1e-9):11,.0f}")
    cpu = (cpu_after.user - cpu_before.user) + (cpu_after.system - cpu_before.system)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6
    print(f"total: {total_rows:,d} rows in {wall:.2f} s wall ({total_rows / wall:,.0f} rows/s), "
          f"{cpu:.1f} CPU s ({cpu_after.user - cpu_before.user:.1f} user + "
          f"{cpu_after.system - cpu_before.system:.1f} sys), peak RSS {peak:.2f} GB, "
          f"threads {args.threads}, memory_limit {args.memory_limit}")
    print(f"load average before {' '.join(load_before)}, after {' '.join(load_after)}")
    if args.statements:
        print("statements over 0.2 s (seconds, SQL start):")
        for seconds, sql in statements:
            if seconds > 0.2:
                print(f"  {seconds:7.2f}  {re.sub(r'WITH raw AS .*', 'WITH raw AS ...', sql)[:140]}")


if __name__ == "__main__":
    main()
