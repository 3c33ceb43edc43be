"""The `corpus leaks` command's work: verdicts for a JSON-lines file of rationales."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from corpus.atomic import atomic_path
from corpus.errors import SourceError
from corpus.leaks.filter import LeakFilter, LeakVerdict
from corpus.leaks.rules import LeakRules


def check_jsonl(
    input_path: str | Path, output_path: str | Path, rules: LeakRules | str | Path | None = None,
    explain: bool = False,
) -> dict[str, Any]:
    """Check every row of a JSON-lines file: each line an object with `rationale`
    (a string), optional `hint`, optional `answer` (the gold option's text) and
    optional `id` (default: the 0-based line number). Writes one line
    `{"id", "leak", "rule"}` per row, in input order, to `output_path`
    (atomically: nothing is written when a line is bad); with `explain`, each
    line also has `match`, `span` (in the normalised text), `part` and `why`.
    Blank lines are skipped. Returns {"rows", "leaks", "by_rule"}.

    A line that is not JSON, not an object, or lacks a string `rationale`
    raises SourceError naming the file and the (1-based) line number."""
    input_path, output_path = Path(input_path), Path(output_path)
    if not isinstance(rules, LeakRules):
        rules = LeakRules.load(rules)
    leak_filter = LeakFilter(rules)
    rows = leaks = 0
    by_rule: dict[str, int] = {}
    try:
        source = input_path.open("rb")
    except OSError as exc:
        raise SourceError(f"{input_path}: cannot read the input file: {exc}") from None
    with source, atomic_path(output_path) as tmp, tmp.open("w", encoding="utf-8") as sink:
        for index, line in enumerate(_lines(source, input_path)):
            if not line.strip():
                continue
            where = f"{input_path}, line {index + 1}"
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise SourceError(f"{where}: not valid JSON ({exc.msg} at column {exc.colno})") from None
            if not isinstance(row, dict):
                raise SourceError(f"{where}: expected a JSON object with 'rationale', found {type(row).__name__}")
            rationale = row.get("rationale")
            if not isinstance(rationale, str):
                found = "no 'rationale' field" if "rationale" not in row else f"'rationale' is {type(rationale).__name__}"
                raise SourceError(f"{where}: each row needs a 'rationale' string; found {found}")
            for key in ("hint", "answer"):
                if row.get(key) is not None and not isinstance(row[key], str):
                    raise SourceError(f"{where}: '{key}' must be a string or null, found {type(row[key]).__name__}")
            row_id = row.get("id")
            verdict = leak_filter.check(rationale, row.get("hint"), row.get("answer"))
            out = {"id": index if row_id is None else row_id, "leak": verdict.leak, "rule": verdict.rule}
            if explain:
                out.update(explanation(verdict, rules))
            sink.write(json.dumps(out, ensure_ascii=False) + "\n")
            rows += 1
            if verdict.leak:
                leaks += 1
                by_rule[verdict.rule] = by_rule.get(verdict.rule, 0) + 1
    return {"rows": rows, "leaks": leaks, "by_rule": dict(sorted(by_rule.items()))}


def _lines(source, path: Path):
    """Decoded lines of a file opened in binary; a decoding error names the line."""
    for number, raw in enumerate(source, start=1):
        try:
            yield raw.decode("utf-8-sig" if number == 1 else "utf-8")
        except UnicodeDecodeError as exc:
            raise SourceError(f"{path}, line {number}: not UTF-8 text ({exc.reason})") from None


def explanation(verdict: LeakVerdict, rules: LeakRules) -> dict[str, Any]:
    """What `--explain` adds to a verdict: the matched span and why the rule exists."""
    return {"match": verdict.match, "span": list(verdict.span) if verdict.span else None, "part": verdict.part,
            "why": rules.why(verdict.rule) if verdict.rule else None}


def explain_line(row: dict) -> str:
    """One verdict line of `corpus leaks --explain` for people: id, rule, span, matched text, why."""
    if not row["leak"]:
        return f"{row['id']}: clean"
    start, end = row["span"]
    return f"{row['id']}: LEAK {row['rule']} ({row['part']}) [{start}:{end}] {row['match']!r} - {row['why']}"
