"""Leave-one-file-out estimates of how the filter does on a labelled set nobody tuned it on.

Each labelled file was written in one go by one writer, and a new held-out set will be another such
file, so the estimate of the next set's figures leaves out one whole file at a time: the classifier
is fitted on the other files and scored on the left-out one, alone and behind the rules (the full
filter: a rule drops a row, else the classifier above the threshold). The classifier's threshold is
chosen on these out-of-file scores (`choose_threshold`), never on the training fit.

The rules are the same in every fold: they were written from the misses of every development file,
so for a file they were tuned on the "rules + classifier" figure flatters them. Only a file measured
before any rule was written from it is an out-of-sample figure of the rules (tests/test_leaks.py
records those); the classifier-alone figures are out of sample for every file.

    python -m corpus.leaks.crossval FILE.jsonl [FILE.jsonl ...]

prints, per threshold, recall / clean dropped of the classifier alone pooled and, per left-out file
and pooled, of rules + classifier; and the threshold `choose_threshold` picks.
"""

from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path

THRESHOLDS = (0.5, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9)
MAX_CLEAN_DROPPED = 0.02  # out-of-file clean rows the classifier alone may drop at the chosen threshold


def lofo(paths, rules=None) -> dict:
    """{file name: {"rows", "fired" (did a rule drop it), "p" (P(leak) from a model not fitted on the file)}}."""
    from corpus.leaks.classifier import fitted, hint_of, training_rows
    from corpus.leaks.filter import LeakFilter
    from corpus.leaks.rules import LeakRules, default_allow, default_spelling, default_word_classes

    rules = rules if rules is not None else LeakRules.load()
    only_rules = LeakFilter(replace(rules, classifier=None))
    spelling, allow, classes = default_spelling(), default_allow(), default_word_classes()
    files = {Path(p).name: training_rows([p]) for p in paths}
    out = {}
    for name, rows in files.items():
        model = fitted([row for other, rs in files.items() if other != name for row in rs], spelling, allow, classes)
        out[name] = {"rows": rows,
                     "fired": [only_rules.check(r["rationale"], r["hint"], r["answer"]).leak for r in rows],
                     "p": model.probabilities([r["rationale"] for r in rows], [hint_of(r) for r in rows])}
    return out


def counts(fold: dict, threshold: float | None, rules: bool = True) -> tuple[int, int, int, int]:
    """(leaks dropped, leaks, clean dropped, clean) of one fold: rules and/or the classifier at `threshold`."""
    caught = leaks = dropped = clean = 0
    for row, fired, p in zip(fold["rows"], fold["fired"], fold["p"]):
        drop = (rules and fired) or (threshold is not None and p >= threshold)
        if row["leak"]:
            leaks, caught = leaks + 1, caught + drop
        else:
            clean, dropped = clean + 1, dropped + drop
    return caught, leaks, dropped, clean


def _pooled(folds: dict, threshold, rules: bool) -> tuple[int, int, int, int]:
    total = (0, 0, 0, 0)
    for fold in folds.values():
        total = tuple(a + b for a, b in zip(total, counts(fold, threshold, rules)))
    return total


def choose_threshold(folds: dict, probes: list[float] = ()) -> float:
    """The lowest threshold of THRESHOLDS (the highest recall) at which the classifier alone drops at
    most MAX_CLEAN_DROPPED of the clean rows out of file and no clinical probe (`probes`: their
    probabilities under the shipped model) reaches it; the rest of the 5% budget is the rules'."""
    for threshold in THRESHOLDS:
        _, _, dropped, clean = _pooled(folds, threshold, rules=False)
        if dropped / clean <= MAX_CLEAN_DROPPED and all(p < threshold for p in probes):
            return threshold
    return THRESHOLDS[-1]


def table(folds: dict) -> list[str]:
    names = list(folds)
    short = [n.removeprefix("leak_").removesuffix(".jsonl") for n in names]
    lines = [f"{sum(len(f['rows']) for f in folds.values())} rows, {len(names)} files; recall/clean dropped, "
             "each file scored by a classifier not fitted on it",
             f"{'threshold':<10s}{'clf alone':>12s}{'rules+clf':>12s} " + " ".join(f"{n:>12s}" for n in short)]
    for threshold in (None, *THRESHOLDS):
        cells = [_cell(counts(folds[name], threshold)) for name in names]
        alone = _cell(_pooled(folds, threshold, rules=False)) if threshold is not None else "-"
        label = "rules" if threshold is None else f"{threshold:.2f}"
        lines.append(f"{label:<10s}{alone:>12s}{_cell(_pooled(folds, threshold, True)):>12s} "
                     + " ".join(f"{c:>12s}" for c in cells))
    lines.append(f"chosen threshold (classifier alone <= {MAX_CLEAN_DROPPED:.0%} clean dropped): {choose_threshold(folds)}")
    return lines


def _cell(c: tuple[int, int, int, int]) -> str:
    return f"{c[0] / c[1]:.3f}/{c[2] / c[3]:.3f}" if c[1] and c[3] else "-"


def main(argv: list[str] | None = None) -> int:
    """python -m corpus.leaks.crossval LABELLED.jsonl [LABELLED.jsonl ...]"""
    args = sys.argv[1:] if argv is None else argv
    if not args:
        print(__doc__, file=sys.stderr)
        return 2
    print("\n".join(table(lofo(args))))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
