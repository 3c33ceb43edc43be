"""k rationale samples per question: seeds, cache lookups, generation, parsing, scoring.

Shared by `sample@r` (plain prompts) and `regenerate@r` (hinted prompts).
Each sample's seed derives from (round seed, round, question id, k index,
hinted), so any sample can be regenerated on its own; its cache key adds the
prompt and the generator fingerprint, so nothing is ever generated twice.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import polars as pl
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from corpus.atomic import canonical_json
from corpus.generate.backends import Generator, SampleRequest
from corpus.generate.cache import GenerationCache, request_key
from corpus.generate.parse import parse_answer, split_rationale
from corpus.generate.prompts import PromptTemplate, question_messages
from corpus.hashing import content_id
from corpus.logs import console

SAMPLE_COLUMNS = {
    "id": pl.String,
    "question_id": pl.String,
    "task": pl.String,
    "round": pl.Int64,
    "generator": pl.String,
    "prompt_hash": pl.String,
    "hinted": pl.Boolean,
    "k_index": pl.Int64,
    "seed": pl.Int64,
    "text": pl.String,
    "rationale": pl.String,
    "predicted": pl.String,
    "correct": pl.Boolean,
    "leaked": pl.Boolean,
    "parse_status": pl.String,
    "new_tokens": pl.Int64,
    "finish_reason": pl.String,
}


def sample_seed(round_seed: int, round_: int, question_id: str, k_index: int, hinted: bool) -> int:
    """A 31-bit seed (every backend accepts it) from what identifies one sample."""
    text = f"{round_seed}:{round_}:{question_id}:{k_index}:{int(hinted)}"
    return int(hashlib.sha256(text.encode()).hexdigest()[:8], 16) & 0x7FFFFFFF


@dataclass
class SamplingReport:
    requested: int = 0
    cached: int = 0
    generated: int = 0
    new_tokens_generated: int = 0
    seconds_generating: float = 0.0
    scored_by_logprob: int = 0
    fingerprint: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        rate = self.new_tokens_generated / self.seconds_generating if self.seconds_generating else 0.0
        samples_rate = self.generated / self.seconds_generating if self.seconds_generating else 0.0
        return {
            "requested": self.requested,
            "cached": self.cached,
            "generated": self.generated,
            "new_tokens_generated": self.new_tokens_generated,
            "seconds_generating": round(self.seconds_generating, 2),
            "tokens_per_second": round(rate, 2),
            "samples_per_second": round(samples_rate, 3),
        }


def _progress() -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[rate]}"),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        console=console,
        transient=False,
    )


def sample_questions(
    questions: Sequence[dict],
    generator: Generator,
    cache: GenerationCache,
    template: PromptTemplate,
    *,
    k: int,
    round_: int,
    round_seed: int,
    hinted: bool = False,
    description: str = "sampling",
) -> tuple[pl.DataFrame, SamplingReport]:
    """k samples per question (hinted: with the gold answer as hint), parsed and scored, sorted by id."""
    report = SamplingReport(fingerprint=generator.fingerprint)
    generator_id = content_id(generator.fingerprint)
    planned = []  # (question, k_index, seed, messages, prompt_hash, key)
    for question in sorted(questions, key=lambda q: q["id"]):
        messages = tuple(question_messages(question, template, hint=question["answer"] if hinted else None))
        prompt_hash = content_id(list(messages))
        for k_index in range(k):
            seed = sample_seed(round_seed, round_, question["id"], k_index, hinted)
            key = request_key(canonical_json(list(messages)), generator.fingerprint, seed)
            planned.append((question, k_index, seed, messages, prompt_hash, key))
    report.requested = len(planned)

    done = cache.get_many(p[5] for p in planned)
    report.cached = len(done)
    missing = {p[5] for p in planned} - set(done)
    if missing:
        requests = [SampleRequest(key=p[5], messages=p[3], seed=p[2]) for p in planned]
        started = time.perf_counter()
        with _progress() as progress:
            bar = progress.add_task(description, total=len(missing), rate="")

            def count_tokens(n: int) -> None:
                report.new_tokens_generated += n
                elapsed = time.perf_counter() - started
                progress.update(bar, rate=f"{report.new_tokens_generated / max(elapsed, 1e-9):.1f} tok/s")

            for finished in generator.generate(requests, missing, on_tokens=count_tokens):
                new = {key: g for key, g in finished.items() if key in missing and key not in done}
                cache.put_many(new)  # flushed before the next batch starts: a kill loses one batch at most
                done.update(new)
                report.generated += len(new)
                elapsed = time.perf_counter() - started
                progress.update(bar, advance=len(new),
                                rate=f"{report.generated / elapsed:.2f} samples/s, "
                                     f"{report.new_tokens_generated / elapsed:.1f} tok/s")
        report.seconds_generating = time.perf_counter() - started

    rows = []
    for question, k_index, seed, messages, prompt_hash, key in planned:
        generation = done[key]
        options = list(question["options"])
        parsed = parse_answer(generation.text, options)
        if parsed.predicted is None and parsed.parse_status == "unparsed":
            # The options are scored as the reply to the prompt: one forward per question,
            # shared by its k samples (and cached like a generation).
            score_key = request_key(canonical_json({"messages": list(messages), "options": options}),
                                    generator.fingerprint, 0)
            scored = cache.get_scores(score_key)
            if scored is None:
                scored = generator.option_logprobs(list(messages), options)
                if scored is not None:
                    cache.put_scores(score_key, scored)
            if scored is not None:
                parsed = parse_answer(generation.text, options, logprob_fn=lambda _opts, s=scored: s)
                report.scored_by_logprob += 1
        content = {
            "question_id": question["id"],
            "round": round_,
            "generator": generator_id,
            "prompt_hash": prompt_hash,
            "hinted": hinted,
            "k_index": k_index,
            "seed": seed,
            "text": generation.text,
        }
        rows.append(
            {
                "id": content_id(content),
                **content,
                "task": question["task"],
                "rationale": split_rationale(generation.text, options),
                "predicted": parsed.predicted,
                "correct": parsed.predicted == question["answer"],
                "leaked": False,
                "parse_status": parsed.parse_status,
                "new_tokens": generation.new_tokens,
                "finish_reason": generation.finish_reason,
            }
        )
    frame = pl.DataFrame(rows, schema=SAMPLE_COLUMNS) if rows else pl.DataFrame(schema=SAMPLE_COLUMNS)
    return frame.sort("id"), report


def sample_stats(frame: pl.DataFrame, report: SamplingReport) -> dict:
    """Accuracy per task, parse-status counts, throughput: the stage's DVC metrics."""
    by_task = {}
    for (task,), part in frame.group_by("task"):
        by_task[task] = {
            "samples": part.height,
            "accuracy": round(float(part["correct"].mean()), 4),
            "questions": part["question_id"].n_unique(),
        }
    return {
        "samples": frame.height,
        "accuracy": round(float(frame["correct"].mean()), 4) if frame.height else 0.0,
        "by_task": dict(sorted(by_task.items())),
        "parse_status": dict(sorted((s, int(n)) for s, n in frame.group_by("parse_status").len().iter_rows())),
        "generation": report.as_dict(),
        "scored_by_logprob": report.scored_by_logprob,
        "generator": report.fingerprint,
    }
