"""Questions for the MIMIC-IV tasks: mortality, readmission (Yes/No) and length of stay (lettered)."""

from __future__ import annotations

import re
from importlib import resources
from pathlib import Path

import polars as pl
import yaml

from corpus.config import CohortConfig
from corpus.errors import SourceError
from corpus.questions.context import Visit, render_visit
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


def _visits_by_patient(
    visits_path: Path, withhold: list[str], subjects: set[int] | None = None
) -> tuple[dict[int, list[Visit]], int]:
    """Each patient's qualifying visits in order (only `subjects`' when given), and how many
    items were withheld as outcome-revealing."""
    patterns = [re.compile(p) for p in withhold]
    withheld = 0
    # Names repeat across visits (a few thousand codes and drugs over millions of
    # items), so each distinct name is matched against the patterns once.
    hidden: dict[str, bool] = {}

    def is_hidden(name: str) -> bool:
        flag = hidden.get(name)
        if flag is None:
            flag = hidden[name] = any(p.search(name) for p in patterns)
        return flag

    def shown(names: list[str]) -> list[str]:
        nonlocal withheld
        kept = [n for n in names if not is_hidden(n)]
        withheld += len(names) - len(kept)
        return kept

    if not visits_path.exists():
        raise SourceError(f"{visits_path}: cohort visits not found (run the cohorts stage first)")
    visits = pl.scan_parquet(visits_path)
    if subjects is not None:
        # A capped recipe asks about a fraction of the patients: read only their histories
        # (the filter is pushed into the parquet scan, so the other rows' lists are never built).
        wanted = pl.Series(sorted(subjects), dtype=visits.collect_schema()["subject_id"])
        visits = visits.filter(pl.col("subject_id").is_in(wanted.implode()))
    visits = visits.sort(["subject_id", "visit_index"]).collect()
    history: dict[int, list[Visit]] = {}
    columns = [visits[c].to_list() for c in ("subject_id", "visit_index", "conditions", "procedures", "medications")]
    for subject, index, conditions, procedures, medications in zip(*columns):
        patient = history.get(subject)
        if patient is None:
            patient = history[subject] = []
        if index != len(patient):
            raise SourceError(f"{visits_path}: subject {subject} visit_index {index} out of order")
        patient.append(Visit(shown(conditions), shown(procedures), shown(medications)))
    return history, withheld


class _Contexts:
    """Context texts from the patients' visits: each visit is rendered once (its text depends
    only on it and the visit before), and a context is the header plus visits 0..i."""

    def __init__(self, history: dict[int, list[Visit]], wording: dict, visits_path: Path) -> None:
        self._history, self._wording, self._path = history, wording, visits_path
        self._texts: dict[int, list[str]] = {}

    def __call__(self, subject: int, visit_index: int) -> str:
        visits = self._history.get(subject)
        if visits is None or visit_index >= len(visits):
            raise SourceError(f"{self._path}: no visit {visit_index} of subject {subject} (cohorts out of date?)")
        texts = self._texts.setdefault(subject, [])
        while len(texts) <= visit_index:
            j = len(texts)
            texts.append(render_visit(j, visits[j], visits[j - 1] if j else None, self._wording))
        return self._wording["header"] + "".join(texts[: visit_index + 1])


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
    history, _ = _visits_by_patient(visits_path, wording.get("withhold_patterns", []), subjects)
    context_of = _Contexts(history, wording["context"], visits_path)
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
