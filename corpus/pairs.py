"""SFT records and DPO pairs from a round's samples, in TRL's conversational formats.

- SFT (prompt-completion): every correct rationale with an explicit answer:
  first-pass correct samples, and regenerated (hinted) ones that reached the
  gold answer without leaking the hint.
- Every training text is a rationale that leads to an answer: an SFT
  completion, a DPO chosen and a DPO rejected text each need a rationale (the
  sample's `rationale`: the text before its parsed answer, see
  corpus/generate/parse.py split_rationale) of at least `min_rationale_chars`
  characters. A bare "C" teaches the answer, not the reasoning; a pair of two
  bare letters teaches a label prior. The prompt is always the plain
  question prompt, never the hinted one: the hint is scaffolding for making
  the data, not something the trained model will see.
- DPO (preference): for a question with at least one correct and one
  incorrect rationale, chosen = correct, rejected = incorrect; distinct texts
  only; at most `max_per_question` pairs, chosen by a hash order of the pair
  (deterministic, independent of row order).

Both are sorted by id. A contamination guard refuses to write anything when
a val or test question, or a val/test patient, appears. `pairs_stats` gives
the stage's headline metrics (counts, drops per reason, regeneration yield),
`pairs_details` the percentiles and per-task-label counts, and
`length_quantiles` the plot data of chosen/rejected lengths.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass

import polars as pl

from corpus.errors import ConfigError, CorpusError
from corpus.generate.prompts import PromptTemplate, question_messages
from corpus.hashing import content_id
from corpus.questions.question_sets import patient_key

# A chosen / SFT text must state its answer: a log-prob guess is no rationale to learn from.
EXPLICIT = ("boxed", "statement")
PERCENTILES = (5, 25, 50, 75, 95)


class ContaminationError(CorpusError):
    """Evaluation questions or patients leaked into training data."""


@dataclass(frozen=True)
class PairsConfig:
    # DPO pairs per question (chosen correct x rejected incorrect), picked by a hash order.
    max_per_question: int = 4
    # Characters of rationale (text before the parsed answer) every SFT completion,
    # DPO chosen and DPO rejected text needs; 0 lets bare answers through.
    min_rationale_chars: int = 40

    def __post_init__(self) -> None:
        if self.max_per_question < 1:
            raise ConfigError(f"params.yaml pairs.max_per_question: expected >= 1, found {self.max_per_question}")
        if self.min_rationale_chars < 0:
            raise ConfigError(f"params.yaml pairs.min_rationale_chars: expected >= 0, found {self.min_rationale_chars}")


def _has_text() -> pl.Expr:
    return pl.col("text").fill_null("").str.strip_chars() != ""


def _rationale_chars() -> pl.Expr:
    return pl.col("rationale").fill_null("").str.strip_chars().str.len_chars()


def chosen_candidates(pool: pl.DataFrame, config: PairsConfig) -> pl.DataFrame:
    """Correct samples an SFT record or a DPO chosen text may come from."""
    return pool.filter(pl.col("correct") & pl.col("parse_status").is_in(EXPLICIT) & _has_text()
                       & (_rationale_chars() >= config.min_rationale_chars))


def rejected_candidates(pool: pl.DataFrame, config: PairsConfig) -> pl.DataFrame:
    """Incorrect samples a DPO rejected text may come from (any parse path: a wrong guess is still wrong)."""
    return pool.filter(~pl.col("correct") & _has_text() & (_rationale_chars() >= config.min_rationale_chars))


def drop_counts(chosen_pool: pl.DataFrame, rejected_pool: pl.DataFrame, config: PairsConfig) -> dict[str, int]:
    """Samples kept out of the pair files, by reason: correct ones with no explicit
    answer, texts with too short a rationale (chosen side and rejected side), empty texts."""
    correct = chosen_pool.filter(pl.col("correct"))
    wrong = rejected_pool.filter(~pl.col("correct"))
    explicit = correct.filter(pl.col("parse_status").is_in(EXPLICIT))
    short = _rationale_chars() < config.min_rationale_chars
    return {
        "chosen_empty_text": explicit.filter(~_has_text()).height,
        "chosen_no_explicit_answer": correct.height - explicit.height,
        "chosen_short_rationale": explicit.filter(_has_text() & short).height,
        "rejected_empty_text": wrong.filter(~_has_text()).height,
        "rejected_short_rationale": wrong.filter(_has_text() & short).height,
    }


def _assistant(text: str) -> list[dict]:
    return [{"role": "assistant", "content": text}]


def _prompt(question: dict, template: PromptTemplate) -> list[dict]:
    return question_messages(question, template)


def sft_records(candidates: pl.DataFrame, questions: dict[str, dict], template: PromptTemplate,
                config: PairsConfig = PairsConfig()) -> list[dict]:
    """One record per distinct correct text (with its rationale) of a question."""
    records = {}
    for row in chosen_candidates(candidates, config).sort("id").iter_rows(named=True):
        question = questions[row["question_id"]]
        content = {"question_id": row["question_id"], "prompt": _prompt(question, template),
                   "completion": _assistant(row["text"])}
        record_id = content_id(content)
        records.setdefault(record_id, {"id": record_id, **content})
    return sorted(records.values(), key=lambda r: r["id"])


def _pair_order(chosen_id: str, rejected_id: str) -> str:
    return hashlib.sha256(f"{chosen_id}:{rejected_id}".encode()).hexdigest()


def dpo_records(
    chosen_pool: pl.DataFrame, rejected_pool: pl.DataFrame, questions: dict[str, dict], template: PromptTemplate,
    config: PairsConfig,
) -> list[dict]:
    chosen_ok = chosen_candidates(chosen_pool, config)
    rejected_ok = rejected_candidates(rejected_pool, config)
    chosen_by_q = {k[0]: v.unique("text", keep="first").sort("id") for k, v in chosen_ok.sort("id").group_by("question_id")}
    rejected_by_q = {k[0]: v.unique("text", keep="first").sort("id") for k, v in rejected_ok.sort("id").group_by("question_id")}
    records = []
    for question_id in sorted(set(chosen_by_q) & set(rejected_by_q)):
        pairs = [
            (c, r)
            for c in chosen_by_q[question_id].iter_rows(named=True)
            for r in rejected_by_q[question_id].iter_rows(named=True)
            if c["text"] != r["text"]
        ]
        pairs.sort(key=lambda pair: _pair_order(pair[0]["id"], pair[1]["id"]))
        question = questions[question_id]
        for chosen, rejected in pairs[: config.max_per_question]:
            content = {"question_id": question_id, "prompt": _prompt(question, template),
                       "chosen": _assistant(chosen["text"]), "rejected": _assistant(rejected["text"])}
            records.append({"id": content_id(content), **content})
    return sorted(records, key=lambda r: r["id"])


def guard_contamination(records: Iterable[dict], train_questions: dict[str, dict], held_out: pl.DataFrame,
                        what: str) -> None:
    """Stop if a training record uses a val/test question, or a question of a val/test patient."""
    held_ids = set(held_out["id"].to_list())
    held_patients = {patient_key(q) for q in held_out.select("task", "subject_id").to_dicts()}
    bad = []
    for record in records:
        question_id = record["question_id"]
        question = train_questions.get(question_id)
        if question_id in held_ids:
            bad.append(f"{record['id']} (question {question_id} is in val/test)")
        elif question is None:
            bad.append(f"{record['id']} (question {question_id} is not a train question)")
        elif patient_key(question) in held_patients:
            bad.append(f"{record['id']} (patient {patient_key(question)} is in val/test)")
    if bad:
        shown = "; ".join(bad[:5])
        raise ContaminationError(f"{what}: {len(bad)} record(s) touch evaluation data, e.g. {shown}")


def _percentiles(lengths: list[int]) -> dict:
    if not lengths:
        return {}
    series = pl.Series(lengths)
    return {f"p{p}": int(series.quantile(p / 100, "nearest")) for p in PERCENTILES}


def _by_task_label(records: list[dict], questions: dict[str, dict]) -> dict:
    counts: dict = {}
    for record in records:
        question = questions[record["question_id"]]
        label = question["answer"].split(". ", 1)[0]
        counts.setdefault(question["task"], {}).setdefault(label, 0)
        counts[question["task"]][label] += 1
    return {task: dict(sorted(labels.items())) for task, labels in sorted(counts.items())}


def _regeneration(regenerated: pl.DataFrame) -> tuple[pl.DataFrame, dict, dict]:
    """(kept rows, drops by filter reason, leak drops by rule)."""
    if not regenerated.height:
        return regenerated, {}, {}
    kept = regenerated.filter(pl.col("filter_reason").is_null())
    reasons = dict(sorted((str(r), int(n)) for r, n in regenerated.group_by("filter_reason").len().iter_rows() if r))
    rules = dict(sorted((str(r), int(n)) for r, n in
                        regenerated.filter(pl.col("leaked")).group_by("leak_rule").len().iter_rows()))
    return kept, reasons, rules


def pairs_stats(sft: list[dict], dpo: list[dict], samples: pl.DataFrame, regenerated: pl.DataFrame,
                hard_ids: set[str], drops: dict[str, int]) -> dict:
    """The stage's headline metrics (pairs_stats.json, a DVC metric): a few numbers to diff."""
    kept, reasons, _ = _regeneration(regenerated)
    regeneration_drops = {"leak": sum(n for r, n in reasons.items() if r.startswith("leak:")),
                          "regenerated_wrong_answer": reasons.get("wrong answer", 0),
                          "regenerated_no_answer": sum(n for r, n in reasons.items() if r.startswith("no answer"))}
    dropped = dict(sorted({**drops, **regeneration_drops}.items()))
    return {
        "sft_records": len(sft),
        "dpo_pairs": len(dpo),
        "dpo_questions": len({r["question_id"] for r in dpo}),
        "samples": samples.height,
        "hard_questions": len(hard_ids),
        "regeneration_yield": round(kept.height / regenerated.height, 4) if regenerated.height else 0.0,
        "dropped": dropped,
        "dropped_total": sum(dropped.values()),
    }


# What pairs_stats.json (the DVC metric) shows; the rest of pairs_stats() goes to pairs_details.json.
HEADLINE = ("sft_records", "dpo_pairs", "hard_questions", "regeneration_yield", "dropped_total")


def headline_stats(stats: dict) -> dict:
    return {key: stats[key] for key in HEADLINE}


def _rationale_lengths(records: list[dict], field: str, rationales: dict[str, int]) -> list[int]:
    return [rationales.get(r[field][0]["content"], 0) for r in records]


def pairs_details(sft: list[dict], dpo: list[dict], questions: dict[str, dict], pool: pl.DataFrame,
                  regenerated: pl.DataFrame, min_rationale_chars: int) -> dict:
    """What is not a headline metric (pairs_details.json): length percentiles, per-task-label counts, reasons."""
    kept, reasons, rules = _regeneration(regenerated)
    # rationale length of each text as it went into a file (the same text has the same rationale)
    rationales = {t: len((r or "").strip()) for t, r in pool.select("text", "rationale").iter_rows()}
    return {
        "min_rationale_chars": min_rationale_chars,
        "sft": {"records": len(sft), "by_task_label": _by_task_label(sft, questions)},
        "dpo": {"pairs": len(dpo), "by_task_label": _by_task_label(dpo, questions)},
        "regeneration": {
            "samples": regenerated.height,
            "kept": kept.height,
            "hard_questions_recovered": kept["question_id"].n_unique() if kept.height else 0,
            "dropped_by_reason": reasons,
            "leak_drops_by_rule": rules,
        },
        "length_chars": {
            "sft_completion": _percentiles([len(r["completion"][0]["content"]) for r in sft]),
            "chosen": _percentiles([len(r["chosen"][0]["content"]) for r in dpo]),
            "rejected": _percentiles([len(r["rejected"][0]["content"]) for r in dpo]),
        },
        "rationale_chars": {
            "sft_completion": _percentiles(_rationale_lengths(sft, "completion", rationales)),
            "chosen": _percentiles(_rationale_lengths(dpo, "chosen", rationales)),
            "rejected": _percentiles(_rationale_lengths(dpo, "rejected", rationales)),
        },
    }


def length_quantiles(dpo: list[dict], field: str) -> str:
    """Plot data (CSV) of one side's text lengths: the length at each 5% quantile of the DPO pairs."""
    lengths = sorted(len(r[field][0]["content"]) for r in dpo)
    rows = ["quantile,chars"]
    if lengths:
        series = pl.Series(lengths)
        rows += [f"{q},{int(series.quantile(q / 100, 'nearest'))}" for q in range(0, 101, 5)]
    return "\n".join(rows) + "\n"
