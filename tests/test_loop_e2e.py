"""The whole loop in a fresh git + DVC repo: data stages, two rounds of sample -> regenerate ->
pairs -> train -> evaluate and the base model's evaluation (the baseline has its own tests), on the demo with a
tiny warmed-up model as the base. Checks the metrics files' structure, that round 2 sampled
with round 1's DPO model, and that round 2 trained from the base model."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest
import yaml

from tests.conftest import requires_demo
from tests.dvc_repos import FIRST_REPRO_LOG, copy_repo, sh as _sh
from tests.tiny_model import build_tiny_model, warm_up_boxed

pytestmark = requires_demo

TASKS = {"los", "masked_value", "mortality", "readmission"}
HEADLINE = {"accuracy", "macro_f1", "parse_failure_rate"}


def _loop_params(params: dict, base: Path) -> dict:
    # The data stages' params (demo, 300 registry stays, one question per feature) are
    # tests.dvc_repos.clean_copy's, already reproduced.
    params["base_model"]["source"] = str(base)
    params["rounds"] = {"1": {"generator": "models/base"}, "2": {"generator": "models/round-1/dpo"}}
    # Registry questions only are sampled: their prompts are short enough for a tiny
    # model to be taught the answer format on in seconds (MIMIC histories run to
    # thousands of tokens); evaluation still answers every task.
    params["sample"].update({"limit": 6, "k": 3, "max_new_tokens": 12, "temperature": 1.0,
                             "tasks": ["masked_value"]})
    params["sample"]["transformers"].update({"threads": 1})
    params["regenerate"]["k"] = 2
    # The warmed-up model answers with a bare box: no rationale to ask for here.
    params["pairs"]["min_rationale_chars"] = 0
    train = params["train"]
    train.update({"max_length": 512, "threads": 1})
    train["lora"]["enabled"] = False  # a 100 K-parameter model trains in full in no time
    for phase in ("sft", "dpo"):
        # 1e-4: larger steps (1e-3) taught the warmed-up model to stop at once, leaving round 2 no pairs.
        train[phase].update({"learning_rate": 1e-4, "max_steps": 2, "per_device_batch_size": 1,
                             "gradient_accumulation_steps": 1})
    params["evaluate"].update({"limit": 1, "max_new_tokens": 12})
    return params


@pytest.fixture(scope="module")
def loop_repo(tmp_path_factory, data_stages_repo) -> Path:
    root = tmp_path_factory.mktemp("loop")
    # The data stages' repro is shared with test_pipeline_dvc (tests/dvc_repos.py); its log starts ours.
    repo = copy_repo(data_stages_repo, root / "repo")
    log = (data_stages_repo / FIRST_REPRO_LOG).read_text()
    params = _loop_params(yaml.safe_load((repo / "params.yaml").read_text()), root / "base")
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    _sh(["git", "commit", "-qam", "the loop's params"], repo)
    # The base: a tiny model whose tokenizer knows the questions' words, warmed up to box an
    # option label on the questions it will be asked (some right, some wrong: pairs exist).
    questions = pl.concat([pl.read_parquet(repo / "data" / "questions" / f"{split}.parquet")
                           for split in ("train", "test")]).sort("id")
    asked = (questions.filter((pl.col("split") == "train") & (pl.col("task") == "masked_value"))
             .head(params["sample"]["limit"]).to_dicts())
    texts = [q["context"] + "\n" + q["question"] for q in questions.to_dicts()]
    tiny = build_tiny_model(root / "build", extra_texts=texts, vocab_size=2048)
    warm_up_boxed(tiny, asked, root / "base", steps=40, tail=None, labels_per_question=2)
    # Everything but the baseline (its own tests cover it): both rounds and the evaluations.
    log += _sh(["dvc", "repro", "evaluate@1", "evaluate@2", "evaluate_base"], repo)
    (repo / "repro.log").write_text(log)
    return repo


def _json(repo: Path, name: str):
    return json.loads((repo / name).read_text())


def test_repro_runs_every_stage_of_both_rounds(loop_repo):
    ran = {line.split("'")[1] for line in (loop_repo / "repro.log").read_text().splitlines()
           if line.startswith("Running stage")}
    for stage in ("sample", "regenerate", "pairs", "train", "evaluate"):
        assert {f"{stage}@1", f"{stage}@2"} <= ran
    assert {"evaluate_base", "base_model"} <= ran
    for round_ in (1, 2):
        for phase in ("sft", "dpo"):
            folder = loop_repo / "models" / f"round-{round_}" / phase
            assert (folder / "model.safetensors").is_file() and (folder / "tokenizer.json").is_file()


def test_evaluation_metrics_have_the_headline_and_every_task(loop_repo):
    assert set(_json(loop_repo, "metrics/base.json")) == HEADLINE  # one model: its figures at the top
    for name, models in (("base", {"base"}), ("round-1", {"sft", "dpo"}), ("round-2", {"sft", "dpo"})):
        headline = _json(loop_repo, f"metrics/{name}.json")
        headline = {"base": headline} if name == "base" else headline
        assert set(headline) == models
        for figures in headline.values():
            assert set(figures) == HEADLINE
            assert 0.0 <= figures["accuracy"] <= 1.0
        details = _json(loop_repo, f"metrics/details/{name}.json")
        for model in models:
            by_task = details["models"][model]["by_task"]
            assert set(by_task) == TASKS
            assert all(f["n"] == 1 for f in by_task.values())  # evaluate.limit per task
            assert {"tpr", "tnr"} <= set(by_task["mortality"]) and "tpr" not in by_task["los"]
            # greedy answers: temperature 0 in the generator fingerprint
            assert details["models"][model]["generation"]["generator"]["sampling"]["temperature"] == 0.0
        confusion = _json(loop_repo, f"metrics/plots/{name}-{sorted(models)[0]}-confusion.json")
        assert len(confusion) == len(TASKS) and {"actual", "predicted"} <= set(confusion[0])


def test_training_summary_counts_what_was_trained(loop_repo):
    for round_ in (1, 2):
        assert {phase: set(v) for phase, v in _json(loop_repo, f"metrics/train-{round_}.json").items()} == \
            {phase: {"steps", "final_loss"} for phase in ("sft", "dpo")}
        summary = _json(loop_repo, f"metrics/details/train-{round_}.json")
        for phase in ("sft", "dpo"):
            assert summary[phase]["steps"] == 2 and summary[phase]["skipped"] is None
            assert summary[phase]["final_loss"] is not None
            curve = _json(loop_repo, f"metrics/plots/train-{round_}-{phase}-loss.json")
            assert [row["step"] for row in curve][-1] == 2
        pairs = loop_repo / "data" / "rounds" / str(round_)
        lock = yaml.safe_load((loop_repo / "dvc.lock").read_text())["stages"][f"train@{round_}"]
        locked = {dep["path"]: dep["md5"] for dep in lock["deps"]}
        # The md5 in the summary is what dvc.lock records for the files trained on.
        assert summary["data_md5"]["sft.jsonl"] == locked[f"data/rounds/{round_}/sft.jsonl"]
        assert summary["data_md5"]["dpo.jsonl"] == locked[f"data/rounds/{round_}/dpo.jsonl"]
        assert (pairs / "sft.jsonl").stat().st_size > 0


def test_round_2_samples_with_round_1_dpo_and_trains_from_the_base(loop_repo):
    from corpus.generate.backends import model_identity

    round_1_dpo = model_identity(loop_repo / "models/round-1/dpo")
    base = model_identity(loop_repo / "models/base")
    assert round_1_dpo != base  # DPO changed the weights
    assert _json(loop_repo, "metrics/details/sample-1.json")["generator"]["model"] == base
    assert _json(loop_repo, "metrics/details/sample-2.json")["generator"]["model"] == round_1_dpo
    lock = yaml.safe_load((loop_repo / "dvc.lock").read_text())["stages"]
    assert "models/round-1/dpo" in {dep["path"] for dep in lock["sample@2"]["deps"]}
    train_2 = {dep["path"] for dep in lock["train@2"]["deps"]}
    assert "models/base" in train_2 and not any(path.startswith("models/round-1") for path in train_2)
    provenance = _json(loop_repo, "models/round-2/sft/training.json")
    assert provenance["base_model"] == "models/base" and provenance["round"] == 2


def test_noop_repro_and_metrics_and_plots_show(loop_repo):
    again = _sh(["dvc", "repro", "evaluate@1", "evaluate@2", "evaluate_base"], loop_repo)
    assert "Running stage" not in again
    shown = _sh(["dvc", "metrics", "show"], loop_repo)
    for path in ("metrics/round-2.json", "metrics/base.json", "metrics/train-1.json"):
        assert path in shown
    header = shown.splitlines()[0].split()
    assert {"dpo.accuracy", "sft.macro_f1", "accuracy", "sft.final_loss", "dpo.steps"} <= set(header)
    plots = _sh(["dvc", "plots", "show", "-o", str(loop_repo / "plots_html")], loop_repo)
    assert (loop_repo / "plots_html" / "index.html").is_file(), plots
