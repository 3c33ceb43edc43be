"""Context texts for many visits at once: render_visit's text, built with polars string ops.

A capped recipe asks ~30,000 questions whose patients have ~80,000 visits and
~3.5 million items between them; formatting each item in Python was most of
the questions stage. Here every item of every visit is one row of a frame:
its number, its mark (new / continued, by a join with the visit before's
items) and its line are columns, and each visit's text is a group-wise join.
The text is the same, byte for byte, as render_visit's (tests hold them equal).
"""

from __future__ import annotations

import re
import string

import polars as pl

from corpus.errors import ConfigError, SourceError
from corpus.questions.context import SECTIONS


def format_expr(template: str, what: str, **fields: pl.Expr) -> pl.Expr:
    """A str.format template as a polars expression over `fields` (plain {name} fields only)."""
    parts: list[pl.Expr] = []
    for literal, field, spec, conversion in string.Formatter().parse(template):
        if literal:
            parts.append(pl.lit(literal))
        if field is None:
            continue
        if field not in fields or spec or conversion:
            raise ConfigError(
                f"wording {what}: {{{field}}} is not one of {', '.join('{' + f + '}' for f in fields)} "
                "(plain fields only: no format spec or conversion)"
            )
        parts.append(fields[field].cast(pl.String))
    return pl.concat_str(parts) if parts else pl.lit("")


def withhold(visits: pl.DataFrame, patterns: list[str]) -> tuple[pl.DataFrame, int]:
    """`visits` without the item names that match a pattern, and how many items were dropped.

    Names repeat across visits, so each distinct name is matched once (Python's re, as the
    patterns are written for it), and the lists are filtered in polars."""
    compiled = [re.compile(p) for p in patterns]
    names = pl.concat([visits[s].explode(empty_as_null=False) for s in SECTIONS]).unique()
    if names.null_count():
        raise SourceError("visits.parquet: an item name is null (rebuild the cohorts)")
    hidden = [n for n in names.to_list() if any(p.search(n) for p in compiled)]
    if not hidden:
        return visits, 0
    before = sum(int(visits[s].list.len().sum()) for s in SECTIONS)
    dropped = pl.Series(hidden, dtype=pl.String).implode()
    visits = visits.with_columns(
        pl.col(s).list.eval(pl.element().filter(~pl.element().is_in(dropped))) for s in SECTIONS
    )
    return visits, before - sum(int(visits[s].list.len().sum()) for s in SECTIONS)


def visit_texts(visits: pl.DataFrame, wording: dict) -> list[str]:
    """render_visit(visit_index, visit, previous visit, wording) for every row of `visits`
    (subject_id, visit_index, conditions, procedures, medications; sorted by subject and
    visit_index, each patient's visits 0..n without gaps)."""
    rows = visits.select("subject_id", "visit_index", *SECTIONS).with_row_index("_row")
    text = [pl.lit("\n\n"), format_expr(wording["visit"], "context.visit", visit_number=pl.col("visit_index"))]
    for section in SECTIONS:
        items = (
            rows.select("_row", "subject_id", "visit_index", pl.col(section).alias("_name"))
            .with_columns(pl.int_ranges(1, pl.col("_name").list.len() + 1).alias("_number"))
            .explode("_name", "_number")
        )
        # An item is continued when the patient's visit just before lists it.
        before = items.select(
            "subject_id", (pl.col("visit_index") + 1).alias("visit_index"), "_name", pl.lit(True).alias("_before")
        ).unique(["subject_id", "visit_index", "_name"])
        items = items.join(before, on=["subject_id", "visit_index", "_name"], how="left", maintain_order="left")
        mark = (
            pl.when(pl.col("visit_index") == 0)
            .then(pl.lit(""))
            .when(pl.col("_before").fill_null(False))
            .then(pl.lit(wording["mark_continued"]))
            .otherwise(pl.lit(wording["mark_new"]))
        )
        line = format_expr(wording["item"], "context.item", number=pl.col("_number"), name=pl.col("_name"))
        lines = (
            items.select("_row", pl.concat_str(pl.lit("\n"), line, mark).alias("_line"))
            .group_by("_row", maintain_order=True)
            .agg(pl.col("_line").str.join(""))
        )
        rows = rows.join(lines.rename({"_line": f"_{section}"}), on="_row", how="left", maintain_order="left")
        text += [pl.lit("\n" + wording["sections"][section]), pl.col(f"_{section}").fill_null("")]
    return rows.sort("_row").select(pl.concat_str(text))[:, 0].to_list()
