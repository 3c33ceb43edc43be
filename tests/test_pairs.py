"""SFT / DPO pair files: selection rules, contamination guard, and one real TRL step on each."""

from __future__ import annotations

import json

import polars as pl
import pytest

from corpus.config import CohortConfig
from corpus.generate.prompts import sampling_template
from corpus.generate.sampling import SAMPLE_COLUMNS
from corpus.pairs import (
    ContaminationError, PairsConfig, dpo_records, drop_counts, guard_contamination, length_quantiles, pairs_details,
    pairs_stats, sft_records,
)
from corpus.questions.mimic import MIMIC_TASKS, build_mimic_questions
from corpus.questions.question_sets import assign_splits
from corpus.questions.sampling import SamplingPolicy
from tests.conftest import requires_demo

pytestmark = requires_demo


@pytest.fixture(scope="module")
def question_sets(demo_cohorts):
    questions = build_mimic_questions(demo_cohorts["kare"], {t: SamplingPolicy() for t in MIMIC_TASKS},
                                      CohortConfig(), 13)
    frame = assign_splits(questions, (0.8, 0.1, 0.1), 13)
    train = {q["id"]: q for q in frame.filter(pl.col("split") == "train").to_dicts()}
    held_out = frame.filter(pl.col("split") != "train")
    return train, held_out


def _sample(question: dict, k: int, text: str, predicted: str | None, status: str, hinted=False,
            rationale: str | None = None) -> dict:
    """A sample row; `rationale` (default: the text before its answer, as split_rationale gives it)."""
    if rationale is None:
        from corpus.generate.parse import split_rationale

        rationale = split_rationale(text, list(question["options"]))
    return {
        "id": f"{question['id'][:12]}{k:02d}{int(hinted)}0", "question_id": question["id"], "task": question["task"],
        "round": 1, "generator": "g", "prompt_hash": "p", "hinted": hinted, "k_index": k, "seed": k, "text": text,
        "rationale": rationale, "predicted": predicted, "correct": predicted == question["answer"], "leaked": False,
        "parse_status": status, "new_tokens": len(text.split()), "finish_reason": "eos",
    }


def _wrong(question: dict) -> str:
    return next(o for o in question["options"] if o != question["answer"])


@pytest.fixture(scope="module")
def samples(question_sets):
    train, _ = question_sets
    rows = []
    for n, question in enumerate(sorted(train.values(), key=lambda q: q["id"])[:12]):
        right, wrong = question["answer"], _wrong(question)
        long_right = f"Renal function worsens and the creatinine doubled since the last visit ({n}a). \\boxed{{{right[0]}}}"
        rows += [
            _sample(question, 0, long_right, right, "boxed"),
            _sample(question, 1, f"Stable vitals, normal labs and an elective procedure only ({n}b). Final answer: {right}",
                    right, "statement"),
            _sample(question, 2, f"Looks fine to me given the unremarkable discharge summary ({n}c). \\boxed{{{wrong[0]}}}",
                    wrong, "boxed"),
            _sample(question, 3, "", None, "unparsed"),
            _sample(question, 4, f"Guessing ({n}d)", right, "logprob"),  # correct by log-prob: no rationale
            _sample(question, 5, long_right, right, "boxed"),
            _sample(question, 6, f"{right[0]}", right, "statement", rationale=""),  # a bare letter / Yes
            _sample(question, 7, f"{wrong[0]}", wrong, "statement", rationale=""),
        ]
    return pl.DataFrame(rows, schema=SAMPLE_COLUMNS)


def test_sft_takes_correct_explicit_rationales_once(samples, question_sets):
    train, _ = question_sets
    records = sft_records(samples, train, sampling_template())
    assert len(records) == 12 * 2  # boxed + statement; the duplicate, the log-prob guess, the bare answer, wrong ones out
    for record in records:
        assert record["prompt"][-1]["role"] == "user" and record["completion"][0]["role"] == "assistant"
        assert "correct answer is" not in record["prompt"][-1]["content"]
        assert train[record["question_id"]]["answer"][0] in record["completion"][0]["content"]
    assert [r["id"] for r in records] == sorted(r["id"] for r in records)


def test_dpo_pairs_correct_against_incorrect_capped_and_deterministic(samples, question_sets):
    train, _ = question_sets
    pairs = dpo_records(samples, samples, train, sampling_template(), PairsConfig(max_per_question=1))
    assert len(pairs) == 12
    for pair in pairs:
        chosen, rejected = pair["chosen"][0]["content"], pair["rejected"][0]["content"]
        assert chosen and rejected and chosen != rejected
        assert "c)" in rejected  # the wrong boxed one; the empty text and the bare letter are never rejected
    shuffled = samples.sample(fraction=1.0, shuffle=True, seed=3)
    assert dpo_records(shuffled, shuffled, train, sampling_template(), PairsConfig(1)) == pairs
    assert len(dpo_records(samples, samples, train, sampling_template(), PairsConfig(4))) == 12 * 2


def test_rationale_rule_drops_bare_answers_and_counts_them(samples, question_sets):
    train, _ = question_sets
    template = sampling_template()
    strict, lax = PairsConfig(min_rationale_chars=40), PairsConfig(min_rationale_chars=0)
    sft = sft_records(samples, train, template, strict)
    assert all(len(r["completion"][0]["content"]) > 40 for r in sft)
    # without the bar the bare answer is an SFT completion (12 more) and a rejected text (2 x 2 pairs per question)
    assert len(sft_records(samples, train, template, lax)) == 12 * 3
    assert len(dpo_records(samples, samples, train, template, lax)) == 12 * 4
    dpo = dpo_records(samples, samples, train, template, strict)
    assert {len(r["rejected"][0]["content"]) > 1 for r in dpo} == {True}
    assert drop_counts(samples, samples, strict) == {
        "chosen_empty_text": 0, "chosen_no_explicit_answer": 12, "chosen_short_rationale": 12,
        "rejected_empty_text": 12, "rejected_short_rationale": 12,  # the unparsed empty text is wrong, and empty
    }
    assert drop_counts(samples, samples, lax)["chosen_short_rationale"] == 0
    # the bar sits between the lengths: 70 drops the statement rationales too (about 60 characters)
    assert len(sft_records(samples, train, template, PairsConfig(min_rationale_chars=70))) == 12 * 1
    with pytest.raises(Exception, match="min_rationale_chars"):
        PairsConfig(min_rationale_chars=-1)


def test_headline_metrics_details_and_plot_data(samples, question_sets):
    train, _ = question_sets
    template, config = sampling_template(), PairsConfig()
    sft = sft_records(samples, train, template, config)
    dpo = dpo_records(samples, samples, train, template, config)
    regenerated = samples.head(4).with_columns(
        pl.Series("leak_rule", ["mentions_hint", None, None, None], dtype=pl.String),
        pl.Series("filter_reason", ["leak:mentions_hint", None, "wrong answer", "no answer (unparsed)"], dtype=pl.String),
        pl.Series("leaked", [True, False, False, False]),
    )
    stats = pairs_stats(sft, dpo, samples, regenerated, {"q1", "q2"}, drop_counts(samples, samples, config))
    assert stats["sft_records"] == 24 and stats["dpo_pairs"] == len(dpo) == 24 and stats["dpo_questions"] == 12
    assert stats["hard_questions"] == 2 and stats["regeneration_yield"] == 0.25
    assert stats["dropped"]["leak"] == 1 and stats["dropped"]["regenerated_wrong_answer"] == 1
    assert stats["dropped"]["regenerated_no_answer"] == 1 and stats["dropped"]["chosen_short_rationale"] == 12
    # headline metrics are numbers only: percentiles and per-task-label counts live in the details
    assert all(isinstance(v, (int, float)) for v in stats.values() if not isinstance(v, dict))
    assert all(isinstance(v, int) for v in stats["dropped"].values())
    details = pairs_details(sft, dpo, train, samples, regenerated, 40)
    assert set(details["length_chars"]) == {"sft_completion", "chosen", "rejected"}
    assert details["rationale_chars"]["chosen"]["p5"] >= 40
    assert sum(n for labels in details["sft"]["by_task_label"].values() for n in labels.values()) == 24
    assert details["regeneration"]["leak_drops_by_rule"] == {"mentions_hint": 1}
    lines = length_quantiles(dpo, "chosen").splitlines()
    assert lines[0] == "quantile,chars" and len(lines) == 22
    values = [int(line.split(",")[1]) for line in lines[1:]]
    assert values == sorted(values) and values[0] == min(len(r["chosen"][0]["content"]) for r in dpo)
    assert length_quantiles([], "chosen") == "quantile,chars\n"


def test_contamination_guard_fires_on_a_planted_test_question(samples, question_sets):
    train, held_out = question_sets
    records = sft_records(samples, train, sampling_template())
    guard_contamination(records, train, held_out, "sft.jsonl")  # clean: no error
    planted = held_out.filter(pl.col("split") == "test").row(0, named=True)
    bad = [*records, {"id": "planted", "question_id": planted["id"]}]
    with pytest.raises(ContaminationError, match=planted["id"]):
        guard_contamination(bad, {**train, planted["id"]: planted}, held_out, "sft.jsonl")
    # A train question of a test patient is caught too.
    sneaky = dict(next(iter(train.values())), subject_id=planted["subject_id"], id="0" * 16)
    with pytest.raises(ContaminationError, match="patient"):
        guard_contamination([{"id": "x", "question_id": sneaky["id"]}], {**train, sneaky["id"]: sneaky}, held_out, "x")


def test_pair_files_load_with_datasets_and_train_one_trl_step(samples, question_sets, tmp_path):
    from datasets import load_dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig, DPOTrainer, SFTConfig, SFTTrainer

    from corpus.atomic import canonical_json
    from tests.tiny_model import build_tiny_model

    train, _ = question_sets
    def shortest(records):  # short contexts keep the training steps quick
        return sorted(records, key=lambda r: (len(r["prompt"][-1]["content"]), r["id"]))[:4]

    sft = shortest(sft_records(samples, train, sampling_template()))
    dpo = shortest(dpo_records(samples, samples, train, sampling_template(), PairsConfig(1)))
    for name, records in (("sft.jsonl", sft), ("dpo.jsonl", dpo)):
        (tmp_path / name).write_text("".join(canonical_json(r) + "\n" for r in records))
    sft_set = load_dataset("json", data_files=str(tmp_path / "sft.jsonl"), split="train")
    dpo_set = load_dataset("json", data_files=str(tmp_path / "dpo.jsonl"), split="train")
    assert sft_set.num_rows == 4 and set(sft_set.column_names) == {"id", "question_id", "prompt", "completion"}
    assert dpo_set.num_rows == 4 and {"prompt", "chosen", "rejected"} <= set(dpo_set.column_names)

    folder = build_tiny_model(tmp_path)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    common = dict(max_steps=1, per_device_train_batch_size=2, use_cpu=True, bf16=False, report_to=[],
                  save_strategy="no", logging_steps=1, max_length=4096)  # whole contexts: none is cut
    model = AutoModelForCausalLM.from_pretrained(folder)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    trainer = SFTTrainer(model=model, args=SFTConfig(output_dir=str(tmp_path / "sft"), **common),
                         train_dataset=sft_set, processing_class=tokenizer)
    result = trainer.train()
    assert result.global_step == 1 and result.training_loss > 0
    assert any(not (p.detach() == before[n]).all() for n, p in model.named_parameters())

    dpo_trainer = DPOTrainer(model=AutoModelForCausalLM.from_pretrained(folder),
                             args=DPOConfig(output_dir=str(tmp_path / "dpo"), **common),
                             train_dataset=dpo_set, processing_class=tokenizer)
    result = dpo_trainer.train()
    assert result.global_step == 1 and result.training_loss == pytest.approx(0.6931, abs=0.05)
