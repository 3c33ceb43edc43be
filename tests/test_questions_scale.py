"""The questions stage's bulk paths against their one-at-a-time definitions: visit texts
rendered in polars equal render_visit's, the withheld-name filter equals a Python filter,
and GX sees only the columns its expectations read without missing a failure."""

from __future__ import annotations

import random

import polars as pl
import pytest

from corpus.errors import ConfigError
from corpus.questions.context import SECTIONS, Visit, render_context, render_visit
from corpus.questions.context_frame import visit_texts, withhold
from corpus.questions.mimic import default_wording_path, load_wording
from corpus.validate import columns_read, load_suite, validate_frame

NAMES = ["Sepsis", "Asthma", "Heparin", "Éther", "Zinc", "death due to X", "aspirin", "A {b}", "x" * 300]


def _random_visits(seed: int, patients: int = 60) -> pl.DataFrame:
    rng = random.Random(seed)
    rows = []
    for subject in range(patients):
        for index in range(rng.randint(1, 5)):
            rows.append({"subject_id": 1000 + subject, "hadm_id": 10 * subject + index, "visit_index": index,
                         **{s: rng.sample(NAMES, rng.randint(0, 5)) for s in SECTIONS}})
    return pl.DataFrame(rows, schema={"subject_id": pl.Int64, "hadm_id": pl.Int64, "visit_index": pl.Int64,
                                      **{s: pl.List(pl.String) for s in SECTIONS}})


def _python_texts(visits: pl.DataFrame, wording: dict) -> list[str]:
    texts, previous = [], {}
    for row in visits.iter_rows(named=True):
        visit = Visit(row["conditions"], row["procedures"], row["medications"])
        before = previous.get(row["subject_id"]) if row["visit_index"] else None
        texts.append(render_visit(row["visit_index"], visit, before, wording))
        previous[row["subject_id"]] = visit
    return texts


@pytest.mark.parametrize("seed", [1, 2])
def test_visit_texts_equal_render_visit(seed):
    wording = load_wording(default_wording_path())["context"]
    visits = _random_visits(seed)
    assert visit_texts(visits, wording) == _python_texts(visits, wording)


def test_visit_texts_follow_another_wording():
    wording = {**load_wording(default_wording_path())["context"], "item": "- {name} [{number}] {{literal}}",
               "visit": "== visit #{visit_number} ==", "mark_new": " *", "mark_continued": ""}
    visits = _random_visits(3, patients=20)
    texts = visit_texts(visits, wording)
    assert texts == _python_texts(visits, wording)
    assert any("{literal}" in t for t in texts)
    # and a whole context is the header plus the visits' texts
    first = visits.filter(pl.col("subject_id") == visits["subject_id"][0])
    visits_list = [Visit(*(r[s] for s in SECTIONS)) for r in first.iter_rows(named=True)]
    assert render_context(visits_list, wording) == wording["header"] + "".join(texts[: first.height])


def test_a_template_field_polars_cannot_fill_is_a_clear_error():
    wording = {**load_wording(default_wording_path())["context"], "item": "{number:>3}. {name}"}
    with pytest.raises(ConfigError, match=r"context.item: \{number\}"):
        visit_texts(_random_visits(4, patients=2), wording)


def test_withhold_drops_matching_names_in_order():
    patterns = load_wording(default_wording_path())["withhold_patterns"]
    visits = _random_visits(5)
    kept, withheld = withhold(visits, patterns)
    expected = [[n for n in names if "death" not in n] for names in visits["conditions"].to_list()]
    assert kept["conditions"].to_list() == expected
    dropped = sum(len(n) for s in SECTIONS for n in visits[s].to_list()) - sum(
        len(n) for s in SECTIONS for n in kept[s].to_list())
    assert withheld == dropped > 0
    assert withhold(visits, [r"\bnever-a-name\b"]) == (visits, 0)


def test_gx_reads_only_the_columns_its_expectations_name():
    assert columns_read(load_suite("question_balance")) == {"max_per_class", "count", "class_target", "policy"}
    questions = columns_read(load_suite("questions"))
    assert {"id", "context", "policy", "task"} <= questions and not {"options", "hadm_id"} & questions


def test_a_failure_is_still_found_and_named_on_the_column_subset():
    frame = pl.DataFrame({"task": ["los", "los"], "answer": ["A", "B"], "count": [3, 0], "policy": ["kare"] * 2,
                          "max_per_class": [5, 5], "class_target": [3, 3], "unread": [[1], [2]]})
    failures = validate_frame(frame, "question_balance", id_column="task")
    assert {(f.expectation, f.column) for f in failures} == {("expect_column_values_to_be_between", "count")}
