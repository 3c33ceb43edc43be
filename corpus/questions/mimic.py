"""Questions for the MIMIC-IV tasks: mortality, readmission (Yes/No) and length of stay (lettered)."""

from __future__ import annotations

import re
from importlib import resources
from pathlib import Path

import polars as pl
import yaml

from corpus.config import CohortConfig
from corpus.errors import SourceError
from corpus.questions.context import Visit, render_context
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
    visits = pl.read_parquet(visits_path)
    if subjects is not None:
        # A capped recipe asks about a fraction of the patients: build only their histories.
        visits = visits.filter(pl.col("subject_id").is_in(pl.Series(sorted(subjects), dtype=visits["subject_id"].dtype)))
    visits = visits.sort(["subject_id", "visit_index"])
    history: dict[int, list[Visit]] = {}
    for row in visits.iter_rows(named=True):
        patient = history.setdefault(row["subject_id"], [])
        if row["visit_index"] != len(patient):
            raise SourceError(f"{visits_path}: subject {row['subject_id']} visit_index {row['visit_index']} out of order")
        patient.append(Visit(shown(row["conditions"]), shown(row["procedures"]), shown(row["medications"])))
    return history, withheld


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
    history, _ = _visits_by_patient(Path(cohorts_dir) / "visits.parquet", wording.get("withhold_patterns", []),
                                    subjects)
    questions = []
    for task, chosen in chosen_by_task.items():
        task_wording = wording["tasks"][task]
        question_text = task_wording["question"].format(readmission_days=cohort_config.readmission_days)
        if task == "los":
            options = lettered(los_option_texts(cohort_config.los_bins, task_wording))
            question_text = "\n".join([question_text, task_wording["options_intro"], *options])
        else:
            options = [task_wording["positive_option"], task_wording["negative_option"]]
        for row in chosen.iter_rows(named=True):
            label = int(row["label"])
            if task == "los":
                answer = options[label]
            else:
                answer = options[0] if label == 1 else options[1]
            context = render_context(history[row["subject_id"]][: row["visit_index"] + 1], wording["context"])
            questions.append(
                make_question(
                    task=task,
                    subject_id=row["subject_id"],
                    hadm_id=row["hadm_id"],
                    context=context,
                    question=question_text,
                    options=options,
                    answer=answer,
                    label_convention=row["label_convention"],
                    template_hash=wording_hash,
                )
            )
    return questions
