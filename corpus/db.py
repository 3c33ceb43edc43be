"""DuckDB connections bounded by params (memory limit, threads) and SQL files."""

from __future__ import annotations

from functools import cache
from importlib import resources
from pathlib import Path

import duckdb

from corpus.config import DuckDBConfig


def connect(config: DuckDBConfig, temp_dir: Path | None = None) -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB that spills to `temp_dir` past its memory limit."""
    con = duckdb.connect(":memory:")
    con.execute(f"SET memory_limit = '{config.memory_limit}'")
    con.execute(f"SET threads = {int(config.threads)}")
    # Row order is fixed by explicit ORDER BY where it matters; dropping
    # insertion order lets large COPYs stream instead of buffering.
    con.execute("SET preserve_insertion_order = false")
    if temp_dir is not None:
        temp_dir.mkdir(parents=True, exist_ok=True)
        con.execute(f"SET temp_directory = '{temp_dir.as_posix()}'")
    return con


@cache
def sql_file(name: str) -> str:
    """The text of corpus/sql/<name>.sql."""
    return resources.files("corpus").joinpath("sql", f"{name}.sql").read_text(encoding="utf-8")


def quote_literal(text: str) -> str:
    """Text as a SQL string literal."""
    return "'" + text.replace("'", "''") + "'"


def quote_path(path: Path | str) -> str:
    """A path as a SQL string literal."""
    return quote_literal(str(path))


def quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'
