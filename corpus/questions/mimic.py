"""Questions for the MIMIC-IV tasks: mortality, readmission (Yes/No) and length of stay (lettered)."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import polars as pl
import yaml

from corpus.config import CohortConfig
from corpus.errors import SourceError
from corpus.questions.context_frame import visit_texts, withhold
from corpus.questions.record import lettered, make_question, template_hash
from corpus.questions.sampling import SamplingPolicy, sample_cohort

MIMIC_TASKS = ("mortality", "readmission", "los")


def default_wording_path() -> Path:
    return Path(str(resources.files("corpus").joinpath("templates", "mimic_questions.yaml")))


def load_wording(path: Path) -> dict:
    return yaml.safe_load(Path(path).read_text(encoding="utf-8"))


def los_option_texts(bins: tuple[int, ...], wording: dict) -> list[str]:
    """One readable day range per length-of-stay class, e.g. 'less than 3 days (0 to 2 days)'."""
    texts = []
    edges = list(bins)
    for index, lower in enumerate(edges):
        upper = edges[index + 1] if index + 1 < len(edges) else None
        if upper is None:
            texts.append(wording["option_last"].format(lower=lower))
        elif index == 0:
            texts.append(wording["option_first"].format(upper=upper, upper_minus_1=upper - 1))
        else:
            texts.append(wording["option_middle"].format(lower=lower, upper=upper, upper_minus_1=upper - 1))
    return texts


def _read_visits(visits_path: Path, subjects: set[int] | None) -> pl.DataFrame:
    """The qualifying visits of `subjects` (all when None), sorted by patient and visit_index."""
    if not visits_path.exists():
        raise SourceError(f"{visits_path}: cohort visits not found (run the cohorts stage first)")
    visits = pl.scan_parquet(visits_path)
    if subjects is not None:
        # A capped recipe asks about a fraction of the patients: read only their histories
        # (the filter is pushed into the parquet scan, so the other rows' lists are never built).
        wanted = pl.Series(sorted(subjects), dtype=visits.collect_schema()["subject_id"])
        visits = visits.filter(pl.col("subject_id").is_in(wanted.implode()))
    visits = visits.sort(["subject_id", "visit_index"]).collect()
    gaps = visits.filter(pl.col("visit_index") != pl.int_range(pl.len()).over("subject_id"))
    if gaps.height:
        row = gaps.row(0, named=True)
        raise SourceError(f"{visits_path}: subject {row['subject_id']} visit_index {row['visit_index']} out of order")
    return visits


class _Contexts:
    """Context texts of the patients' visits: each visit's text is rendered once, for all
    visits together (context_frame.visit_texts), and a context is the header plus the
    texts of visits 0..i."""

    def __init__(self, visits: pl.DataFrame, wording: dict, visits_path: Path) -> None:
        self._header, self._path = wording["header"], visits_path
        self._texts = visit_texts(visits, wording)
        subjects = visits["subject_id"].to_list()
        self._start: dict[int, int] = {}
        self._count: dict[int, int] = {}
        for row, subject in enumerate(subjects):
            if subject not in self._start:
                self._start[subject] = row
            self._count[subject] = self._count.get(subject, 0) + 1

    def __call__(self, subject: int, visit_index: int) -> str:
        if visit_index >= self._count.get(subject, 0):
            raise SourceError(f"{self._path}: no visit {visit_index} of subject {subject} (cohorts out of date?)")
        start = self._start[subject]
        return self._header + "".join(self._texts[start : start + visit_index + 1])


def build_mimic_questions(
    cohorts_dir: Path,
    policies: dict[str, SamplingPolicy],
    cohort_config: CohortConfig,
    seed: int,
    wording_path: Path | None = None,
) -> list[dict]:
    """Question records (no split yet) for every MIMIC task that has a policy."""
    wording_path = wording_path or default_wording_path()
    wording = load_wording(wording_path)
    wording_hash = template_hash(wording_path)
    chosen_by_task = {}
    for task in MIMIC_TASKS:
        if task not in policies:
            continue
        cohort_path = Path(cohorts_dir) / f"{task}.parquet"
        if not cohort_path.exists():
            raise SourceError(f"{cohort_path}: cohort for task {task} not found (run the cohorts stage first)")
        chosen_by_task[task] = sample_cohort(pl.read_parquet(cohort_path), policies[task], seed)
    subjects = {s for chosen in chosen_by_task.values() for s in chosen["subject_id"].to_list()}
    visits_path = Path(cohorts_dir) / "visits.parquet"
    visits, _ = withhold(_read_visits(visits_path, subjects), wording.get("withhold_patterns", []))
    context_of = _Contexts(visits, wording["context"], visits_path)
    questions = []
    for task, chosen in chosen_by_task.items():
        task_wording = wording["tasks"][task]
        question_text = task_wording["question"].format(readmission_days=cohort_config.readmission_days)
        if task == "los":
            options = lettered(los_option_texts(cohort_config.los_bins, task_wording))
            question_text = "\n".join([question_text, task_wording["options_intro"], *options])
        else:
            options = [task_wording["positive_option"], task_wording["negative_option"]]
        columns = [chosen[c].to_list() for c in ("subject_id", "hadm_id", "visit_index", "label", "label_convention")]
        for subject, hadm, visit_index, label, convention in zip(*columns):
            label = int(label)
            if task == "los":
                answer = options[label]
            else:
                answer = options[0] if label == 1 else options[1]
            questions.append(
                make_question(
                    task=task,
                    subject_id=subject,
                    hadm_id=hadm,
                    context=context_of(subject, visit_index),
                    question=question_text,
                    options=options,
                    answer=answer,
                    label_convention=convention,
                    template_hash=wording_hash,
                )
            )
    return questions
