"""Question sets from the real demo cohorts: wording, sampling, splits, contract, reproducibility."""

from __future__ import annotations

import shutil

import polars as pl
import pytest

from corpus.config import CohortConfig
from corpus.hashing import file_sha256
from corpus.questions.context import Visit, render_context
from corpus.questions.mimic import MIMIC_TASKS, build_mimic_questions, default_wording_path, load_wording
from corpus.questions.question_sets import assign_splits, publish_question_sets
from corpus.questions.sampling import SamplingPolicy, sample_cohort
from corpus.validate import ValidationError
from tests.conftest import requires_demo

pytestmark = requires_demo

NATURAL = {task: SamplingPolicy() for task in MIMIC_TASKS}


@pytest.fixture(scope="module")
def demo_questions(demo_cohorts):
    return build_mimic_questions(demo_cohorts["kare"], NATURAL, CohortConfig(), seed=13)


@pytest.fixture(scope="module")
def demo_question_files(tmp_path_factory, demo_questions):
    out = tmp_path_factory.mktemp("q") / "questions"
    publish_question_sets(demo_questions, NATURAL, (0.8, 0.1, 0.1), 13, out)
    return out


def test_context_marks_new_and_continued():
    wording = load_wording(default_wording_path())["context"]
    text = render_context(
        [Visit(["Sepsis", "Asthma"], ["Intubation"], ["Heparin"]), Visit(["Asthma", "Anemia"], ["Dialysis"], ["Heparin"])],
        wording,
    )
    assert "1. Sepsis\n" in text and "(new)" not in text.split("Visit 1:")[0]
    second = text.split("Visit 1:")[1]
    assert "1. Asthma (continued from previous visit)" in second
    assert "2. Anemia (new)" in second
    assert "1. Heparin (continued from previous visit)" in second
    assert text.index("Visit 0:") < text.index("Visit 1:")


def test_every_answer_is_an_option_and_matches_the_cohort_label(demo_questions, demo_cohorts):
    labels = {}
    for task in MIMIC_TASKS:
        frame = pl.read_parquet(demo_cohorts["kare"] / f"{task}.parquet")
        labels.update({(task, h): l for h, l in zip(frame["hadm_id"], frame["label"])})
    for q in demo_questions:
        assert q["answer"] in q["options"]
        label = labels[(q["task"], q["hadm_id"])]
        if q["task"] == "los":
            assert q["answer"].startswith("ABCD"[label] + ". ")
            assert all(option in q["question"] for option in q["options"])
        else:
            assert q["answer"] == ("Yes" if label == 1 else "No")


def test_contexts_show_history_up_to_the_visit_only(demo_questions, demo_cohorts):
    visits = pl.read_parquet(demo_cohorts["kare"] / "visits.parquet")
    counts = dict(visits.group_by("subject_id").len().iter_rows())
    index = {(r["subject_id"], r["hadm_id"]): r["visit_index"] for r in visits.iter_rows(named=True)}
    for q in demo_questions:
        i = index[(q["subject_id"], q["hadm_id"])]
        assert f"Visit {i}:" in q["context"]
        assert f"Visit {i + 1}:" not in q["context"]
        if q["task"] != "los":
            assert counts[q["subject_id"]] >= i + 1


def test_splits_are_patient_disjoint_and_cover_every_question(demo_question_files, demo_questions):
    frames = {s: pl.read_parquet(demo_question_files / f"{s}.parquet") for s in ("train", "val", "test")}
    patients = {s: set(f["subject_id"]) for s, f in frames.items()}
    assert not patients["train"] & patients["val"]
    assert not patients["train"] & patients["test"]
    assert not patients["val"] & patients["test"]
    assert sum(f.height for f in frames.values()) == len(demo_questions)
    for split, frame in frames.items():
        assert set(frame["split"]) == {split}
        assert frame["id"].to_list() == sorted(frame["id"].to_list())
    total = sum(len(p) for p in patients.values())
    assert 0.7 < len(patients["train"]) / total < 0.9


def test_same_inputs_give_byte_identical_files(tmp_path, demo_cohorts, demo_question_files):
    again = build_mimic_questions(demo_cohorts["kare"], NATURAL, CohortConfig(), seed=13)
    publish_question_sets(again, NATURAL, (0.8, 0.1, 0.1), 13, tmp_path / "again")
    for split in ("train", "val", "test"):
        assert file_sha256(tmp_path / "again" / f"{split}.parquet") == file_sha256(demo_question_files / f"{split}.parquet")


def test_template_wording_is_part_of_the_id(tmp_path, demo_cohorts, demo_questions):
    wording = tmp_path / "wording.yaml"
    shutil.copy(default_wording_path(), wording)
    wording.write_text(wording.read_text().replace("how long will", "for how long will"))
    changed = build_mimic_questions(demo_cohorts["kare"], {"los": SamplingPolicy()}, CohortConfig(), 13, wording)
    before = {q["id"] for q in demo_questions if q["task"] == "los"}
    assert len(changed) == len(before) and not before & {q["id"] for q in changed}


def test_kare_policy_positives_first_one_per_patient_capped(demo_cohorts):
    cohort = pl.read_parquet(demo_cohorts["kare"] / "mortality.parquet")
    chosen = sample_cohort(cohort, SamplingPolicy("kare", max_per_class=20, total=30), seed=13)
    assert chosen["subject_id"].n_unique() == chosen.height
    positive_patients = cohort.filter(pl.col("label") == 1)["subject_id"].n_unique()
    assert int(chosen["label"].sum()) == positive_patients  # every positive patient, fewer than the cap
    assert chosen.height == min(30, positive_patients + 20)
    assert sample_cohort(cohort, SamplingPolicy("kare", 20, 30), seed=13).equals(chosen)
    assert not sample_cohort(cohort, SamplingPolicy("kare", 20, 30), seed=14)["hadm_id"].equals(chosen["hadm_id"])


def test_balanced_and_natural_policies(demo_cohorts):
    cohort = pl.read_parquet(demo_cohorts["kare"] / "los.parquet")
    balanced = sample_cohort(cohort, SamplingPolicy("balanced"), seed=13)
    sizes = balanced["label"].value_counts()["count"].to_list()
    assert len(set(sizes)) == 1 and sizes[0] == cohort["label"].value_counts()["count"].min()
    natural = sample_cohort(cohort, SamplingPolicy("natural", total=50), seed=13)
    assert natural.height == 50 and natural["hadm_id"].n_unique() == 50


def test_balanced_policy_passes_the_balance_suite(tmp_path, demo_cohorts):
    policies = {"los": SamplingPolicy("balanced"), "mortality": SamplingPolicy("kare", max_per_class=5)}
    questions = build_mimic_questions(demo_cohorts["kare"], policies, CohortConfig(), 13)
    frame = publish_question_sets(questions, policies, (0.8, 0.1, 0.1), 13, tmp_path / "q")
    assert frame.filter(pl.col("task") == "mortality")["subject_id"].n_unique() == frame.filter(
        pl.col("task") == "mortality").height


def test_contract_violation_stops_before_any_file_is_written(tmp_path, demo_questions):
    bad = dict(demo_questions[0])
    bad["context"] = bad["context"] + "\nThe patient expired on day 3."
    bad["id"] = "f" * 16
    with pytest.raises(ValidationError) as error:
        publish_question_sets([*demo_questions, bad], NATURAL, (0.8, 0.1, 0.1), 13, tmp_path / "q")
    message = str(error.value)
    assert "expect_column_values_to_not_match_regex_list" in message and "f" * 16 in message
    assert not (tmp_path / "q").exists()
    assert list(tmp_path.iterdir()) == []


def test_imbalance_against_the_declared_policy_is_caught(tmp_path, demo_questions):
    declared = {**NATURAL, "mortality": SamplingPolicy("balanced")}  # the natural set is 98/10
    with pytest.raises(ValidationError, match="expect_column_pair_values_to_be_equal"):
        publish_question_sets(demo_questions, declared, (0.8, 0.1, 0.1), 13, tmp_path / "q")
    assert not (tmp_path / "q").exists()


def test_duplicate_ids_are_caught(tmp_path, demo_questions):
    frame = assign_splits(demo_questions, (0.8, 0.1, 0.1), 13)
    assert frame["id"].n_unique() == frame.height
    with pytest.raises(ValidationError, match="expect_column_values_to_be_unique"):
        publish_question_sets([*demo_questions, demo_questions[0]], NATURAL, (0.8, 0.1, 0.1), 13, tmp_path / "q")


# The label-word expectation, as it was first written (one Python pattern per word, \b and \d):
# the suite now holds one RE2-compatible alternation (see its "how"), which must flag exactly
# the texts these flag, non-ASCII neighbours included. One difference, on the safe side: a
# non-ASCII letter glued to a label word ("µdied") is a boundary for it, not for \b.
LABEL_WORDS_REFERENCE = [
    r"(?i)\bexpired\b", r"(?i)\bdied\b", r"(?i)\bdeath\b", r"(?i)\bdeceased\b", r"(?i)\bmortality\b",
    r"(?i)\breadmi(?:tted|ssion)\b", r"(?i)\blength of stay\b", r"(?i)\bdischarged?\b",
    r"(?i)\b\d+(?:\.\d+)? days?\b", r"(?i)\bLOS\b", r"(?i)hospital_expire_flag", r"(?i)\bdischtime\b",
    r"(?i)\badmittime\b",
]
LABEL_WORD_TEXTS = [
    "Expired", "the patient died.", "Death\nnoted", "x deceased", "(mortality)", "Readmitted twice", "READMISSION",
    "length of stay: long", "discharge summary", "was discharged", "stayed 3 days", "for 2.5 day", "LOS=4",
    "a hospital_expire_flag", "dischtime", "the admittime,", "µ died", "°death°", "Sepsis → expired",
    "ends with mortality", "5 days", "los angeles",  # (?i)LOS: case-blind, as it was
    # clean: the words inside longer words, or not at a boundary
    "deathly pale", "diedre", "undeceasedly", "readmit", "lengthy stay", "dischargeable", "3 daysx", "x3 days",
    "slos", "glossary", "admittimes", "immortality", "predischarge", "Sepsis → fine",
    "Heparin 5000 units", "",
]


def test_label_word_pattern_flags_what_the_per_word_patterns_flag():
    import json

    import pandas as pd

    from corpus.validate import SCHEMAS

    suite = json.loads((SCHEMAS / "questions.suite.json").read_text())
    [pattern] = next(e for e in suite["expectations"] if "regex_list" in e["kwargs"])["kwargs"]["regex_list"]
    # Through pandas' str.contains on its default string dtype: the call GX's pandas engine makes.
    texts = pd.Series(LABEL_WORD_TEXTS).astype(str)
    flagged = texts.str.contains(pattern).tolist()
    reference = [any(pd.Series([t]).astype(object).str.contains(p).iloc[0] for p in LABEL_WORDS_REFERENCE)
                 for t in LABEL_WORD_TEXTS]
    assert flagged == reference
    assert sum(flagged) == 22 and not any(flagged[22:])
    assert texts.str.contains(pattern).tolist() == flagged and pd.Series(["µdied"]).str.contains(pattern).iloc[0]


def test_label_word_after_non_ascii_text_stops_publication(tmp_path, demo_questions):
    bad = dict(demo_questions[0])
    bad["context"] = bad["context"] + "\nTemp 38.9 °C; died"
    bad["id"] = "e" * 16
    with pytest.raises(ValidationError) as error:
        publish_question_sets([*demo_questions, bad], NATURAL, (0.8, 0.1, 0.1), 13, tmp_path / "q")
    assert "expect_column_values_to_not_match_regex_list" in str(error.value) and "e" * 16 in str(error.value)
