"""Great Expectations suites (JSON files in schemas/) run on our artifacts.

GX 1.x validates pandas frames, so a polars frame goes through Arrow. A failed
expectation raises ValidationError naming the suite, the expectation, the
column and a few offending record ids.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import polars as pl

from corpus.errors import CorpusError

SCHEMAS = Path(__file__).resolve().parents[1] / "schemas"
os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")


class ValidationError(CorpusError):
    """An artifact broke its data contract."""


@dataclass(frozen=True)
class Failure:
    expectation: str
    column: str
    offending_ids: list[str]

    def __str__(self) -> str:
        ids = ", ".join(self.offending_ids[:5]) or "-"
        return f"{self.expectation} on {self.column}: e.g. {ids}"


def _context():
    import great_expectations as gx

    logging.getLogger("great_expectations").setLevel(logging.ERROR)
    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = {"globally": False}
    return context


def load_suite(name: str, schemas: Path = SCHEMAS):
    import great_expectations as gx

    path = schemas / f"{name}.suite.json"
    raw = json.loads(path.read_text(encoding="utf-8"))
    return gx.ExpectationSuite(name=raw["name"], expectations=raw["expectations"], meta=raw.get("meta") or {})


def _condition_columns(condition) -> set[str]:
    """Columns a GX 1.x row condition names ({"column": {"name": ...}}, nested in and/or)."""
    found: set[str] = set()
    if isinstance(condition, dict):
        for key, value in condition.items():
            if key == "column" and isinstance(value, dict) and isinstance(value.get("name"), str):
                found.add(value["name"])
            else:
                found |= _condition_columns(value)
    elif isinstance(condition, list):
        for item in condition:
            found |= _condition_columns(item)
    return found


def columns_read(suite) -> set[str] | None:
    """The columns the suite's expectations read, or None when one of them may read any column
    (a table-level expectation, a text row condition)."""
    columns: set[str] = set()
    for expectation in suite.expectations:
        kwargs = expectation.configuration.kwargs
        named = [kwargs.get("column"), kwargs.get("column_A"), kwargs.get("column_B"), *(kwargs.get("column_list") or [])]
        named = [c for c in named if c]
        if not named:
            return None
        columns.update(named)
        condition = kwargs.get("row_condition")
        if isinstance(condition, str) and condition:
            return None  # pandas query text: not parsed here
        if condition:
            columns |= _condition_columns(condition)
    return columns


def validate_frame(frame: pl.DataFrame, suite_name: str, id_column: str | None = "id") -> list[Failure]:
    """Every failed expectation of the suite on `frame` (empty list: the frame passes).

    Every row is validated; only the columns no expectation reads are left out of the
    pandas copy GX works on (a question frame's option lists and ids of templates cost
    as much to convert as the checked columns)."""
    context = _context()
    suite = load_suite(suite_name)
    wanted = columns_read(suite)
    subset = frame if wanted is None else frame.select([c for c in frame.columns if c in wanted])
    pandas_frame = subset.to_pandas(use_pyarrow_extension_array=False)
    asset = context.data_sources.add_pandas(suite_name).add_dataframe_asset(suite_name)
    batch = asset.add_batch_definition_whole_dataframe("all").get_batch(batch_parameters={"dataframe": pandas_frame})
    result = batch.validate(suite, result_format="COMPLETE")
    failures = []
    for item in result.results:
        if item.success:
            continue
        config = item.expectation_config
        kwargs = config.kwargs
        column = kwargs.get("column") or ",".join(
            kwargs.get("column_list") or [kwargs.get("column_A", ""), kwargs.get("column_B", "")]
        )
        indexes = item.result.get("unexpected_index_list") or []
        if id_column and id_column in frame.columns:
            positions = [i for i in indexes if isinstance(i, int)]
            ids = [str(frame[id_column][i]) for i in positions[:5]]
        else:
            ids = [str(v) for v in (item.result.get("partial_unexpected_list") or [])[:5]]
        if item.exception_info and item.exception_info.get("raised_exception"):
            ids = [str(item.exception_info.get("exception_message"))]
        failures.append(Failure(expectation=config.type, column=column, offending_ids=ids))
    return failures


def require_valid(frame: pl.DataFrame, suite_name: str, what: str, id_column: str | None = "id") -> None:
    """Raise ValidationError listing every failed expectation of `suite_name` on `frame`."""
    failures = validate_frame(frame, suite_name, id_column)
    if failures:
        lines = "\n".join(f"  - {failure}" for failure in failures)
        raise ValidationError(f"{what} failed suite schemas/{suite_name}.suite.json:\n{lines}")
