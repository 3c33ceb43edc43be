"""Pair files -> TRL datasets, each record fitted to `train.max_length` tokens.

A record too long for the budget loses the oldest part of its patient
history (whole visits first, then lines), with a marker line saying so; the
question, its options, the answer-format instruction and the completion are
never cut. The prompt is rebuilt from the question record with the same
template the pairs stage used, so a fitted prompt reads like any other.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from corpus.errors import CorpusError
from corpus.generate.prompts import PromptTemplate, question_messages

OMITTED = "(earlier part of the record omitted to fit the training length)"


def read_jsonl(path: Path) -> list[dict]:
    records = []
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as error:
                raise CorpusError(f"{path}:{number}: not a JSON record ({error.msg})") from None
    return records


def fit_context(context: str, fits: Callable[[str], bool]) -> tuple[str, bool]:
    """The longest tail of `context` (header line kept) that `fits`; (context, truncated?).

    Whole visits are dropped first, oldest first (a blank line opens a visit);
    only when the current visit alone is too long are its first lines dropped.
    """
    if fits(context):
        return context, False
    header, *body = context.split("\n")

    def cut(start: int) -> str:
        return "\n".join([header, OMITTED, *body[start:]])

    visit_starts = [i + 1 for i, line in enumerate(body) if not line.strip()]
    for start in visit_starts:
        if fits(cut(start)):
            return cut(start), True
    # Smallest line start within the last visit that fits (fits is monotone in the start).
    low, high = (visit_starts[-1] if visit_starts else 0), len(body)
    while low + 1 < high:
        middle = (low + high) // 2
        if fits(cut(middle)):
            high = middle
        else:
            low = middle
    return cut(high), True


@dataclass
class FittedRecords:
    rows: list[dict]
    truncated: int  # records whose history was cut
    over_budget: int  # records left out: over max_length even with no history left


class RecordFitter:
    """Builds the training prompt of each record from its question, history cut to fit."""

    def __init__(self, tokenizer, template: PromptTemplate, questions: dict[str, dict], max_length: int):
        self.tokenizer = tokenizer
        self.template = template
        self.questions = questions
        self.max_length = max_length

    def _length(self, messages: list[dict]) -> int:
        ids = self.tokenizer.apply_chat_template(messages, tokenize=True)
        ids = ids["input_ids"] if hasattr(ids, "keys") else ids
        return len(ids)

    def _question(self, record: dict, source: str) -> dict:
        question = self.questions.get(record["question_id"])
        if question is None:
            raise CorpusError(f"{source}: record {record['id']} names question {record['question_id']}, "
                              "which is not in data/questions/train.parquet")
        return question

    def prompt(self, record: dict, completions: Sequence[list[dict]], source: str) -> tuple[list[dict], bool, bool]:
        question = self._question(record, source)

        def messages_for(context: str) -> list[dict]:
            return question_messages({**question, "context": context}, self.template)

        def fits(context: str) -> bool:
            prompt = messages_for(context)
            return all(self._length(prompt + completion) <= self.max_length for completion in completions)

        context, truncated = fit_context(question["context"], fits)
        return messages_for(context), truncated, not fits(context)

    def _fit(self, records: list[dict], source: str, fields: tuple[str, ...]) -> FittedRecords:
        rows, truncated, over = [], 0, 0
        for record in records:
            prompt, cut, still_over = self.prompt(record, [record[f] for f in fields], source)
            if still_over:
                # Even with no history left the question and its answer do not fit: training on it
                # would cut the answer (TRL truncates the end), so the record is left out, counted.
                over += 1
                continue
            rows.append({"prompt": prompt, **{f: record[f] for f in fields}})
            truncated += cut
        return FittedRecords(rows, truncated, over)

    def sft(self, records: list[dict], source: str) -> FittedRecords:
        return self._fit(records, source, ("completion",))

    def dpo(self, records: list[dict], source: str) -> FittedRecords:
        return self._fit(records, source, ("chosen", "rejected"))
