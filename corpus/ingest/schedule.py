"""Two tables at a time: the order in which ingest works through the spec's tables.

DuckDB reads a gzipped csv on one thread (the file cannot be split), and that
pass types every value too, so while the largest table (labevents) is read one
core would sit idle. Two workers, each with its own cursor on the one database
(one memory limit, one thread pool), keep both busy: one reads the largest file
while the other works through the rest.

A table waits for the earlier tables its row rules name (admissions for the
visit tables, patients for admissions). Among the tables ready, the one heading
the longest chain of source bytes goes first, so the chain through the big
dependent tables (patients -> admissions -> prescriptions) starts at once
beside labevents instead of after the small dictionaries.

A failure stops new work on later tables, lets the running ones end, and runs
every table listed before the failed one; the error raised is that of the first
failing table in spec order: the same one a table-by-table run would stop on.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from pathlib import Path

import duckdb

from corpus.ingest.table_spec import TableSpec


def dependencies(specs: list[TableSpec]) -> dict[str, set[str]]:
    """For each table, the earlier tables its row rules refer to by name."""
    found: dict[str, set[str]] = {}
    for index, spec in enumerate(specs):
        rules = " ".join(rule.when for rule in spec.row_rules)
        found[spec.name] = {earlier.name for earlier in specs[:index]
                            if re.search(rf"(?<![\w.]){re.escape(earlier.name)}(?!\w)", rules)}
    return found


def _chain_bytes(specs: list[TableSpec], deps: dict[str, set[str]], files: dict[str, Path]) -> dict[str, int]:
    """A table's source bytes plus those of its heaviest chain of dependent tables."""
    weight: dict[str, int] = {}
    for spec in reversed(specs):  # dependents come later in the spec
        later = [weight[s.name] for s in specs if spec.name in deps[s.name] and s.name in weight]
        weight[spec.name] = files[spec.name].stat().st_size + max(later, default=0)
    return weight


def run_tables(
    con: duckdb.DuckDBPyConnection,
    specs: list[TableSpec],
    files: dict[str, Path],
    work: Callable[[duckdb.DuckDBPyConnection, TableSpec], object],
    workers: int,
) -> dict[str, object]:
    """work(cursor, spec) for every spec whose table has a file; results by table, in spec order."""
    specs = [s for s in specs if s.name in files]
    order = {s.name: i for i, s in enumerate(specs)}
    deps = dependencies(specs)
    weight = _chain_bytes(specs, deps, files)
    done: dict[str, object] = {}
    errors: dict[str, BaseException] = {}
    pending = list(specs)
    running: dict[Future, str] = {}
    cursors = [con.cursor() for _ in range(max(1, workers))]
    free = list(cursors)
    lock = threading.Lock()

    def task(cursor: duckdb.DuckDBPyConnection, spec: TableSpec) -> object:
        try:
            return work(cursor, spec)
        finally:
            with lock:
                free.append(cursor)

    pool = ThreadPoolExecutor(max_workers=len(cursors))
    try:
        while pending or running:
            first_error = min((order[n] for n in errors), default=len(specs))
            # After a failure, only tables listed before it still run (a dependency
            # failed means its dependents cannot: they are listed after it).
            pending = [s for s in pending if order[s.name] < first_error and not (deps[s.name] & errors.keys())]
            ready = sorted((s for s in pending if deps[s.name] <= done.keys()),
                           key=lambda s: (-weight[s.name], order[s.name]))
            while ready and free:
                spec = ready.pop(0)
                pending.remove(spec)
                with lock:
                    cursor = free.pop()
                running[pool.submit(task, cursor, spec)] = spec.name
            if not running:
                break
            finished, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in finished:
                name = running.pop(future)
                try:
                    done[name] = future.result()
                except BaseException as exc:  # noqa: BLE001 -- re-raised below, in spec order
                    errors[name] = exc
    except BaseException:
        # Interrupted (Ctrl-C) while tables run: stop their queries rather than wait them out.
        for cursor in cursors:
            cursor.interrupt()
        raise
    finally:
        pool.shutdown(wait=True)
        for cursor in cursors:
            cursor.close()
    if errors:
        raise errors[min(errors, key=order.__getitem__)]
    return {s.name: done[s.name] for s in specs}
