"""Classification figures shared by the LLM evaluation and the tabular baseline.

Both report through `classification_metrics`, so "accuracy" or "macro-F1" mean
the same computation wherever they appear in metrics/*.json.

Label forms. A question's `answer` is one of its `options`, written in full
("C. 7 to 13 days", "Yes"); a parsed prediction (`corpus.generate.parse`) is
an element of the options too, or None when nothing could be read. Scoring
works on labels: the option itself for Yes/No questions, the option letter
for lettered options ("C"), i.e. `corpus.generate.prompts.answer_labels`.
Every gold and predicted value may be given either way ("C. 7 to 13 days" or
"C"); both are reduced to the label before counting.

Figures:

* `n`: scored questions.
* `accuracy`: share of predictions equal to the gold label; a None
  (unparsed, invalid, conflicting) prediction counts as wrong.
* `macro_f1`: scikit-learn's F1 averaged over `labels` (every label, present
  or not), `zero_division=0`; a None prediction is a miss for its gold class.
* `per_class_recall`: {label: recall}; None for a label with no gold
  question (a recall of 0 there would read as "always missed").
* `support`: {label: gold count}.
* `parse_failure_rate`: share of None predictions.
* `confusion`: {gold label: {predicted label or "none": count}}, every label
  as a row and every label plus "none" as a column (zeros kept, so matrices of
  different runs line up).
* binary tasks (`positive` given): `tpr` = recall of the positive label,
  `tnr` = recall of the other one (None where that class has no question).

Floats are rounded to 4 places; keys come in a fixed order. With n = 0 the
rates are None.
"""

from __future__ import annotations

from collections.abc import Sequence

from sklearn.metrics import f1_score

from corpus.generate.prompts import answer_labels

__all__ = ["BINARY_TASKS", "NONE_LABEL", "classification_metrics", "task_labels", "to_label"]

BINARY_TASKS = ("mortality", "readmission")
# Confusion column for predictions that could not be read.
NONE_LABEL = "none"
# Stand-in for None inside scikit-learn, which needs one type of label; never a real label.
_MISSING = "\x00unparsed"


def _round(value: float | None) -> float | None:
    return None if value is None else round(float(value), 4)


def to_label(value: str, labels: Sequence[str]) -> str | None:
    """The label `value` stands for ("C. 7 to 13 days" -> "C", "Yes" -> "Yes"), None if none of `labels`."""
    if value in labels:
        return value
    head = answer_labels([value])[0]
    return head if head in labels else None


def task_labels(task: str, options: Sequence[str]) -> tuple[list[str], str | None]:
    """(labels, positive label) for a question of `task` with these `options`.

    mortality / readmission: (["No", "Yes"], "Yes"). Lettered options (los,
    masked_value, any other task): the letters in order, ("A", ..., "D"), no
    positive. Raises ValueError when the options do not fit the task.
    """
    options = list(options)
    if task in BINARY_TASKS:
        if sorted(options) != ["No", "Yes"]:
            raise ValueError(f"task {task}: expected options Yes and No, found {options}")
        return ["No", "Yes"], "Yes"
    letters = answer_labels(options)
    if not options or letters == options or len(set(letters)) != len(letters):
        raise ValueError(f"task {task}: expected lettered options ('A. ...', 'B. ...'), found {options}")
    return sorted(letters), None


def classification_metrics(
    gold: Sequence[str],
    predicted: Sequence[str | None],
    labels: Sequence[str],
    positive: str | None = None,
) -> dict:
    """Scores of `predicted` against `gold` over `labels` (see the module docstring for each figure)."""
    labels = list(labels)
    if len(gold) != len(predicted):
        raise ValueError(f"classification_metrics: {len(gold)} gold answers but {len(predicted)} predictions")
    if not labels or len(set(labels)) != len(labels) or NONE_LABEL in labels:
        raise ValueError(f"classification_metrics: labels must be distinct and not {NONE_LABEL!r}, found {labels}")
    if positive is not None and (positive not in labels or len(labels) != 2):
        raise ValueError(f"classification_metrics: positive {positive!r} needs exactly two labels including it, found {labels}")

    gold_labels: list[str] = []
    for index, value in enumerate(gold):
        label = to_label(value, labels) if value is not None else None
        if label is None:
            raise ValueError(f"classification_metrics: gold answer {value!r} (row {index}) is not one of the labels {labels}")
        gold_labels.append(label)
    predicted_labels: list[str | None] = []
    for index, value in enumerate(predicted):
        label = None if value is None else to_label(value, labels)
        if value is not None and label is None:
            # A parsed prediction is always one of the options: anything else is a caller's bug, not a miss.
            raise ValueError(f"classification_metrics: prediction {value!r} (row {index}) is not one of the labels {labels} (use None for unparsed)")
        predicted_labels.append(label)

    n = len(gold_labels)
    support = {label: sum(1 for g in gold_labels if g == label) for label in labels}
    hits = {label: sum(1 for g, p in zip(gold_labels, predicted_labels) if g == label and p == label) for label in labels}
    recall = {label: (hits[label] / support[label] if support[label] else None) for label in labels}
    confusion = {
        row: {col: sum(1 for g, p in zip(gold_labels, predicted_labels) if g == row and (p or NONE_LABEL) == col)
              for col in labels + [NONE_LABEL]}
        for row in labels
    }
    if n:
        accuracy = sum(hits.values()) / n
        macro_f1 = f1_score(gold_labels, [p if p is not None else _MISSING for p in predicted_labels],
                            labels=labels, average="macro", zero_division=0)
        failures = sum(1 for p in predicted_labels if p is None) / n
    else:
        accuracy = macro_f1 = failures = None

    result: dict = {"n": n, "accuracy": _round(accuracy), "macro_f1": _round(macro_f1)}
    if positive is not None:
        negative = next(label for label in labels if label != positive)
        result["tpr"] = _round(recall[positive])
        result["tnr"] = _round(recall[negative])
    result["per_class_recall"] = {label: _round(recall[label]) for label in labels}
    result["support"] = support
    result["parse_failure_rate"] = _round(failures)
    result["confusion"] = confusion
    return result
