"""Stages `evaluate_base` and `evaluate@<round>`: the test split answered greedily by a model.

Every model answers through the same generator interface, prompt and parser
as sampling (greedy: temperature 0, one answer per question), so a figure
here means what the sample stage's accuracy means. Generations go through the
content cache: the base model is answered once, whatever the number of
rounds and experiments. Per task: accuracy, macro-F1, TPR/TNR for the binary
tasks, per-class recall (corpus.scoring), the parse-failure rate (answers
that needed the log-probability fallback or could not be read), and
answer-rationale consistency: of the boxed answers whose rationale also
states a conclusion, the share where the two agree.

Headline figures go to the DVC metrics file (few numbers per model, the same
keys in every round so `dvc metrics diff` lines them up); per-task details
next to it under metrics/details/; plots: accuracy per task and model, and a
confusion matrix per round (DVC's confusion template).
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path

import polars as pl

from corpus.atomic import atomic_path, write_json
from corpus.config import _build, load_params, rounds_config, sample_config
from corpus.errors import ConfigError
from corpus.generate.parse import parse_answer, split_rationale
from corpus.scoring import classification_metrics, task_labels, to_label

log = logging.getLogger(__name__)

QUESTIONS = Path("data/questions")
BASE_MODEL = Path("models/base")
EXPLICIT = ("boxed", "statement")


@dataclass(frozen=True)
class EvaluateConfig:
    # Test questions per task, the first by id (null: the whole split). The demo keeps
    # a few per task to stay inside its time budget; a real install sets null.
    limit: int | None = None
    # Greedy answers are cut here (the sample stage's max_new_tokens is the usual choice).
    max_new_tokens: int = 160
    split: str = "test"

    def __post_init__(self) -> None:
        if self.split not in ("val", "test"):
            raise ConfigError(f"params.yaml evaluate.split: expected val or test, found {self.split!r}")
        if self.limit is not None and self.limit < 1:
            raise ConfigError(f"params.yaml evaluate.limit: expected >= 1 or null, found {self.limit}")


def evaluate_config(params: dict) -> EvaluateConfig:
    return _build(EvaluateConfig, params, "evaluate")


def evaluation_questions(config: EvaluateConfig, questions_dir: Path = QUESTIONS) -> list[dict]:
    """The split's questions, at most `limit` per task (stratified: the first by id within each task)."""
    frame = pl.read_parquet(questions_dir / f"{config.split}.parquet").sort("task", "id")
    if config.limit is not None:
        frame = frame.group_by("task", maintain_order=True).head(config.limit)
    return frame.sort("id").to_dicts()


def consistency(text: str, options: list[str], predicted: str | None, status: str) -> bool | None:
    """Does the conclusion the rationale states agree with the boxed answer? None: nothing to compare."""
    if status != "boxed" or predicted is None:
        return None
    stated = parse_answer(split_rationale(text, options), options)
    if stated.predicted is None or stated.parse_status not in EXPLICIT:
        return None
    return stated.predicted == predicted


def model_metrics(answers: pl.DataFrame, questions: dict[str, dict]) -> dict:
    """Per-task figures and the headline over all tasks for one model's answers."""
    by_task = {}
    for (task,), part in sorted(answers.group_by("task"), key=lambda item: item[0]):
        rows = part.sort("question_id").to_dicts()
        options = list(questions[rows[0]["question_id"]]["options"])
        labels, positive = task_labels(task, options)
        gold = [questions[r["question_id"]]["answer"] for r in rows]
        figures = classification_metrics(gold, [r["predicted"] for r in rows], labels, positive)
        # The log-probability fallback answers, but the model did not state an answer: a parse failure.
        figures["parse_failure_rate"] = round(sum(r["parse_status"] not in EXPLICIT for r in rows) / len(rows), 4)
        checks = [consistency(r["text"], list(questions[r["question_id"]]["options"]), r["predicted"],
                              r["parse_status"]) for r in rows]
        checked = [c for c in checks if c is not None]
        figures["consistency"] = round(sum(checked) / len(checked), 4) if checked else None
        figures["consistency_checked"] = len(checked)
        by_task[task] = figures
    n = sum(f["n"] for f in by_task.values())
    headline = {
        "accuracy": round(sum(f["accuracy"] * f["n"] for f in by_task.values()) / n, 4) if n else None,
        # Mean of the tasks' macro-F1: each task counts once, whatever its size.
        "macro_f1": round(sum(f["macro_f1"] for f in by_task.values()) / len(by_task), 4) if by_task else None,
        "parse_failure_rate": round(sum(f["parse_failure_rate"] * f["n"] for f in by_task.values()) / n, 4) if n else None,
    }
    return {"headline": headline, "by_task": by_task, "questions": n}


def answer_questions(model: Path, questions: list[dict], params: dict, config: EvaluateConfig, label: str):
    """Greedy answers of `model` to `questions` through the configured generator backend."""
    from corpus.generate.cache import GenerationCache
    from corpus.generate.prompts import sampling_template
    from corpus.generate.sampling import sample_questions
    from corpus.stages import build_generator

    sampling = dataclasses.replace(sample_config(params), temperature=0.0, top_p=1.0,
                                   max_new_tokens=config.max_new_tokens)
    template = sampling_template()
    generator = build_generator(sampling, model, template.hash)
    cache = GenerationCache(sampling.cache)
    try:
        frame, report = sample_questions(questions, generator, cache, template, k=1, round_=0, round_seed=0,
                                         description=f"evaluating {label}")
    finally:
        cache.close()
    del generator
    return frame.with_columns(pl.lit(label).alias("model")), report


def _plot_rows(results: dict[str, dict], questions: dict[str, dict], answers: pl.DataFrame, round_label: str):
    accuracy = [{"round": round_label, "model": model, "task": task, "accuracy": figures["accuracy"]}
                for model, result in results.items() for task, figures in result["by_task"].items()]
    confusion = []
    for row in answers.sort("model", "question_id").iter_rows(named=True):
        question = questions[row["question_id"]]
        labels, _ = task_labels(question["task"], list(question["options"]))
        predicted = to_label(row["predicted"], labels) if row["predicted"] is not None else "none"
        confusion.append({"model": row["model"], "actual": f"{question['task']}:{to_label(question['answer'], labels)}",
                          "predicted": f"{question['task']}:{predicted}"})
    return accuracy, confusion


def evaluate_models(models: dict[str, Path], name: str, params_path: Path = Path("params.yaml"),
                    questions_dir: Path = QUESTIONS, out_root: Path = Path(".")) -> dict:
    """Answer the evaluation questions with each model; write metrics/<name>.json, details, plot data."""
    params = load_params(params_path)
    config = evaluate_config(params)
    questions = evaluation_questions(config, questions_dir)
    if not questions:
        raise ConfigError(f"{questions_dir}/{config.split}.parquet: no questions to evaluate on")
    by_id = {q["id"]: q for q in questions}
    results, frames, generation = {}, [], {}
    for label, model in models.items():
        frame, report = answer_questions(model, questions, params, config, label)
        results[label] = model_metrics(frame, by_id)
        generation[label] = {**report.as_dict(), "generator": report.fingerprint}
        frames.append(frame)
        log.info("%s %s: accuracy %s, macro-F1 %s over %d question(s)", name, label,
                 results[label]["headline"]["accuracy"], results[label]["headline"]["macro_f1"], len(questions))
    answers = pl.concat(frames)
    metrics_dir = out_root / "metrics"
    # One model: its headline at the top level (the keys baseline.json uses too); several: per model.
    headline = ({label: r["headline"] for label, r in results.items()} if len(results) > 1
                else next(iter(results.values()))["headline"])
    write_json(metrics_dir / f"{name}.json", headline)
    write_json(metrics_dir / "details" / f"{name}.json", {
        "split": config.split, "limit_per_task": config.limit, "questions": len(questions),
        "models": {label: {"path": str(models[label]), "by_task": r["by_task"], "generation": generation[label]}
                   for label, r in results.items()},
    })
    accuracy, confusion = _plot_rows(results, by_id, answers, name)
    write_json(metrics_dir / "plots" / f"{name}-accuracy.json", accuracy)
    for label in models:
        write_json(metrics_dir / "plots" / f"{name}-{label}-confusion.json",
                   [{k: v for k, v in row.items() if k != "model"} for row in confusion if row["model"] == label])
    with atomic_path(out_root / "data" / "evaluation" / f"{name}.parquet") as tmp:
        answers.select("model", "question_id", "task", "predicted", "correct", "parse_status", "text",
                       "generator").sort("model", "question_id").write_parquet(tmp, compression="zstd")
    return results


def run_evaluate_base(params_path: Path = Path("params.yaml")) -> dict:
    """Stage evaluate_base: the base model, once for every round."""
    return evaluate_models({"base": BASE_MODEL}, "base", params_path)


def run_evaluate(round_: int, params_path: Path = Path("params.yaml")) -> dict:
    """Stage evaluate@<round>: the round's SFT model and its DPO (or GRPO) model."""
    from corpus.train.config import train_config
    from corpus.train.stage import model_dir

    params = load_params(params_path)
    if round_ not in rounds_config(params):
        raise ConfigError(f"params.yaml rounds: no entry for round {round_}")
    method = train_config(params).method
    return evaluate_models({"sft": model_dir(round_, "sft"), method: model_dir(round_, method)},
                           f"round-{round_}", params_path)
