"""The question record: one schema for every task, and its content id.

    id                16 hex digits: sha256 over the canonical JSON of every other field but `split`
    task              mortality | readmission | los | masked_value
    subject_id        patient (registry: the stay's record id)
    hadm_id           the admission asked about (registry questions: null)
    split             train | val | test (by patient)
    context           patient context text shown to the model
    question          the question text, options included as shown
    options           the answer strings, exactly as a model must give them:
                      ["Yes", "No"] or ["A. ...", "B. ...", "C. ...", "D. ..."]
    answer            the right one, an element of `options`
    label_convention  kare | pyhealth (MIMIC tasks) | creason (registry)
    template_hash     sha256 (16 hex) of the wording template the text came from
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from corpus.hashing import content_id

QUESTION_FIELDS = (
    "id",
    "task",
    "subject_id",
    "hadm_id",
    "split",
    "context",
    "question",
    "options",
    "answer",
    "label_convention",
    "template_hash",
)
OPTION_LETTERS = "ABCDEFGHIJ"


def template_hash(*paths: Path | str) -> str:
    """Hash of the template files' bytes, in the order given."""
    digest = hashlib.sha256()
    for path in paths:
        digest.update(Path(path).read_bytes())
    return digest.hexdigest()[:16]


def lettered(option_texts: list[str]) -> list[str]:
    """["less than 3 days", ...] -> ["A. less than 3 days", ...]"""
    return [f"{OPTION_LETTERS[i]}. {text}" for i, text in enumerate(option_texts)]


def make_question(
    *,
    task: str,
    subject_id: int,
    hadm_id: int | None,
    context: str,
    question: str,
    options: list[str],
    answer: str,
    label_convention: str,
    template_hash: str,
    split: str | None = None,
) -> dict:
    """A question record with its content id; `split` is set later, by patient."""
    if answer not in options:
        raise ValueError(f"answer {answer!r} is not among the options {options!r} (task {task}, subject {subject_id})")
    content = {
        "task": task,
        "subject_id": int(subject_id),
        "hadm_id": None if hadm_id is None else int(hadm_id),
        "context": context,
        "question": question,
        "options": list(options),
        "answer": answer,
        "label_convention": label_convention,
        "template_hash": template_hash,
    }
    return {"id": content_id(content), "split": split, **content}
