"""The RLVR option (corpus/train/grpo.py, corpus/train/rewards.py): the correct-answer
reward read by the project's parser, and real TRL GRPOTrainer runs on the tiny Llama.

A random tiny model never writes a readable answer, so every reward would be 0,
every group's advantage 0 and GRPO a no-op. The run therefore starts, as the
pipeline's does, from a warmed-up model: a few plain torch steps teach the tiny
Llama to reply with a box around one of the options, each option equally
likely. Its groups then mix rewards of 0 and 1 and GRPO has a gradient.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest

from corpus.config import CohortConfig
from corpus.generate.prompts import answer_labels, question_messages, sampling_template
from corpus.questions.context import Visit, render_context
from corpus.questions.mimic import default_wording_path, load_wording, los_option_texts
from corpus.questions.record import lettered, make_question, template_hash
from corpus.train.grpo import GRPOSettings, grpo_dataset, train_grpo
from corpus.train.rewards import completion_text, correct_answer_reward
from tests.tiny_model import build_tiny_model, warm_up_boxed

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

WORDING_PATH = default_wording_path()
WORDING = load_wording(WORDING_PATH)
YES_NO = [WORDING["tasks"]["mortality"]["positive_option"], WORDING["tasks"]["mortality"]["negative_option"]]
LOS = lettered(los_option_texts(CohortConfig().los_bins, WORDING["tasks"]["los"]))
# A registry (C-Reason) masked-value question's options, as corpus/questions/masked_value.py letters them.
TEMPERATURE = lettered(["37.1 °C or above", "36.5 °C to below 36.8 °C", "below 36.5 °C", "36.8 °C to below 37.1 °C"])


def _question(task: str, subject_id: int, answer: str, visits: list[Visit]) -> dict:
    """A question record built the way corpus/questions/mimic.py builds one."""
    wording = WORDING["tasks"][task]
    text = wording["question"].format(readmission_days=CohortConfig().readmission_days)
    if task == "los":
        options = LOS
        text = "\n".join([text, wording["options_intro"], *options])
    else:
        options = [wording["positive_option"], wording["negative_option"]]
    return make_question(
        task=task, subject_id=subject_id, hadm_id=20_000 + subject_id,
        context=render_context(visits, WORDING["context"]), question=text, options=options, answer=answer,
        label_convention="kare", template_hash=template_hash(WORDING_PATH), split="train",
    )


SEPSIS_VISIT = Visit(["Sepsis", "Acute kidney failure"], ["Hemodialysis"], ["Vancomycin", "Heparin"])
HEART_VISIT = Visit(["Congestive heart failure"], ["Insertion of endotracheal tube"], ["Furosemide"])
PNEUMONIA_VISIT = Visit(["Pneumonia", "Sepsis"], ["Hemodialysis"], ["Insulin"])


# --- the reward ---------------------------------------------------------------------------------------------------

def _chat(text: str) -> list[dict]:
    return [{"role": "assistant", "content": text}]


REWARD_CASES = [
    # Yes/No (mortality, readmission): right, wrong, unreadable.
    pytest.param("Lactate is rising despite vasopressors.\n\n\\boxed{Yes}", "Yes", YES_NO, 1.0, id="yes-no-boxed-correct"),
    pytest.param("Stable vitals and a short medication list. The answer is No.", "No", YES_NO, 1.0, id="yes-no-statement-correct"),
    pytest.param("The patient is stable.\n\n\\boxed{No}", "Yes", YES_NO, 0.0, id="yes-no-wrong"),
    pytest.param("The patient is stable and will likely go home.", "No", YES_NO, 0.0, id="yes-no-unparseable"),
    pytest.param("\\boxed{Yes} ... on reflection \\boxed{No}", "No", YES_NO, 0.0, id="yes-no-conflict-is-not-correct"),
    pytest.param("\\boxed{Maybe}", "No", YES_NO, 0.0, id="yes-no-invalid"),
    pytest.param("", "No", YES_NO, 0.0, id="empty-completion"),
    # Lettered (length of stay; registry masked value): letter, full text, text without the letter.
    pytest.param("Antibiotics for 5 days, then home.\n\\boxed{B}", LOS[1], LOS, 1.0, id="los-letter-correct"),
    pytest.param("The answer is \\boxed{B. 3 to 6 days}.", LOS[1], LOS, 1.0, id="los-full-text-correct"),
    pytest.param("Tracheostomy: a long stay. \\boxed{14 days or more}", LOS[3], LOS, 1.0, id="los-text-correct"),
    pytest.param("Short course. \\boxed{A}", LOS[1], LOS, 0.0, id="los-wrong"),
    pytest.param("A very long stay is expected. \\boxed{E}", LOS[3], LOS, 0.0, id="los-out-of-range"),
    pytest.param("The stay length depends on the response to treatment.", LOS[0], LOS, 0.0, id="los-unparseable"),
    pytest.param("Febrile on admission: \\boxed{A}", TEMPERATURE[0], TEMPERATURE, 1.0, id="registry-correct"),
    pytest.param("Hypothermic: \\boxed{C}", TEMPERATURE[0], TEMPERATURE, 0.0, id="registry-wrong"),
]


@pytest.mark.parametrize("text, answer, options, expected", REWARD_CASES)
@pytest.mark.parametrize("form", ["conversational", "plain"])
def test_correct_answer_reward(text, answer, options, expected, form):
    completion = _chat(text) if form == "conversational" else text
    assert correct_answer_reward([completion], answer=[answer], options=[options]) == [expected]


def test_reward_is_per_completion_and_ignores_trl_extras():
    """One float per completion, in order; the keyword arguments TRL adds are accepted and unused."""
    completions = [_chat("\\boxed{Yes}"), _chat("\\boxed{No}"), _chat("\\boxed{C}"), _chat("\\boxed{B}")]
    rewards = correct_answer_reward(
        completions, answer=["Yes", "Yes", LOS[2], LOS[2]], options=[YES_NO, YES_NO, LOS, LOS],
        prompts=[[{"role": "user", "content": "q"}]] * 4, completion_ids=[[1]] * 4, trainer_state=None,
        log_metric=lambda *a: None, question_id=["a", "a", "b", "b"],
    )
    assert rewards == [1.0, 0.0, 1.0, 0.0]
    assert all(type(reward) is float for reward in rewards)
    with pytest.raises(ValueError, match="one answer and one option list per completion"):
        correct_answer_reward(completions, answer=["Yes"], options=[YES_NO])


def test_completion_text_reads_the_assistant_turns():
    assert completion_text("plain \\boxed{B}") == "plain \\boxed{B}"
    assert completion_text([{"role": "assistant", "content": "\\boxed{No}"}]) == "\\boxed{No}"
    assert completion_text([{"role": "user", "content": "\\boxed{Yes}"}, {"role": "assistant", "content": "No"}]) == "No"


def test_reward_agrees_with_sampling_correctness():
    """Correct means what sampling means: parse_answer(text, options).predicted == question["answer"]."""
    from corpus.generate.parse import parse_answer

    question = _question("los", 7, LOS[2], [SEPSIS_VISIT])
    for text in ["\\boxed{C}", "\\boxed{C. 7 to 13 days}", "Final answer: 7 to 13 days", "\\boxed{D}", "no idea"]:
        sampled_correct = parse_answer(text, list(question["options"])).predicted == question["answer"]
        reward = correct_answer_reward([_chat(text)], answer=[question["answer"]], options=[question["options"]])
        assert reward == [1.0 if sampled_correct else 0.0], text


# --- settings -----------------------------------------------------------------------------------------------------

def test_settings_reject_what_trl_would_reject_in_our_names():
    with pytest.raises(ValueError, match="num_generations: expected at least 2"):
        GRPOSettings(num_generations=1)
    with pytest.raises(ValueError, match="loss_type"):
        GRPOSettings(loss_type="ppo")
    settings = GRPOSettings(num_generations=4, per_device_train_batch_size=6, gradient_accumulation_steps=1)
    with pytest.raises(ValueError, match=r"6 completions per step, which is not a multiple of num_generations \(4\)"):
        settings.check_batch()
    # params.yaml values as YAML reads them: "1e-6" is a string there, 0 an int.
    from_yaml = GRPOSettings.from_params({"learning_rate": "1e-6", "beta": 0, "num_generations": 2})
    assert from_yaml.learning_rate == 1e-6 and type(from_yaml.beta) is float
    with pytest.raises(ValueError, match="train.grpo.learning_rate: expected a number"):
        GRPOSettings(learning_rate="fast")
    with pytest.raises(ValueError, match=r"unknown keys \['num_generation'\]"):
        GRPOSettings.from_params({"num_generation": 4})
    # 6 x 2 accumulation steps = 12 = 3 questions of 4 generations: allowed.
    GRPOSettings(num_generations=4, per_device_train_batch_size=6, gradient_accumulation_steps=2).check_batch()
    assert GRPOSettings(num_generations=4, per_device_train_batch_size=6, gradient_accumulation_steps=2).questions_per_step() == 3


def test_dataset_uses_the_plain_sampling_prompt():
    question = _question("mortality", 1, "Yes", [SEPSIS_VISIT])
    row = grpo_dataset([question])[0]
    assert row["prompt"] == question_messages(question, sampling_template())
    assert row["answer"] == "Yes" and row["options"] == YES_NO and row["question_id"] == question["id"]
    bad = dict(question, answer="Maybe")
    with pytest.raises(ValueError, match="not among"):
        grpo_dataset([bad])
    with pytest.raises(ValueError, match="no questions"):
        grpo_dataset([])


# --- a real GRPO run ----------------------------------------------------------------------------------------------

def _warm_up(model_dir: Path, questions: list[dict], out: Path) -> Path:
    """The tiny model taught to reply `\\boxed{<label>}`, every option label equally likely
    (tests.tiny_model.warm_up_boxed): the format, and no preference, so GRPO's reward decides."""
    return warm_up_boxed(model_dir, questions, out)


def _gold_margin(model_dir: Path, questions: list[dict]) -> float:
    """Mean over questions of log p(gold reply) - mean log p(other replies), under the model at `model_dir`."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    template = sampling_template()
    margins = []
    for question in questions:
        prompt = tokenizer.apply_chat_template(question_messages(question, template), add_generation_prompt=True,
                                               tokenize=False)
        prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        scores = {}
        for option, label in zip(question["options"], answer_labels(list(question["options"]))):
            reply_ids = tokenizer(f"\\boxed{{{label}}}<|im_end|>", add_special_tokens=False)["input_ids"]
            ids = torch.tensor([prompt_ids + reply_ids])
            with torch.no_grad():
                logprobs = torch.log_softmax(model(input_ids=ids).logits[0, :-1], dim=-1)
            targets = ids[0, 1:]
            token_logprobs = logprobs[torch.arange(len(targets)), targets][len(prompt_ids) - 1 :]
            scores[option] = float(token_logprobs.sum())
        others = [score for option, score in scores.items() if option != question["answer"]]
        margins.append(scores[question["answer"]] - sum(others) / len(others))
    return sum(margins) / len(margins)


def _weights(model_dir: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(model_dir / "model.safetensors"))


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One torch thread: a 100 K-parameter model gains nothing from two, and the
    machine's two cores are shared (two spinning threads ran the warm-up 7x slower)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def grpo_runs(tmp_path_factory):
    """One warmed-up start model, GRPO twice from it with the same seed (for determinism)."""
    root = tmp_path_factory.mktemp("grpo")
    # Gold answers all "Yes" / "B": a direction the reward can push the policy in within two steps.
    questions = [
        _question("mortality", 1, "Yes", [SEPSIS_VISIT]),
        _question("readmission", 2, "Yes", [HEART_VISIT, SEPSIS_VISIT]),
        _question("mortality", 3, "Yes", [PNEUMONIA_VISIT]),
        _question("los", 4, LOS[1], [HEART_VISIT]),
    ]
    start = _warm_up(build_tiny_model(root), questions, root / "sft")
    settings = GRPOSettings(
        max_steps=2, num_generations=4, per_device_train_batch_size=8, max_completion_length=16,
        # 1000x a real run's 1e-6, so that two steps move a 100 K-parameter model measurably.
        learning_rate=1e-3, temperature=1.0, top_p=1.0,
    )
    out_dir = root / "round-1" / "grpo"
    out_dir.mkdir(parents=True)
    (out_dir / "stale.txt").write_text("from an earlier run")  # replaced whole, not merged into
    first = train_grpo(start, questions, out_dir, settings, seed=11)
    second = train_grpo(start, questions, root / "again" / "grpo", settings, seed=11)
    return {"root": root, "start": start, "questions": questions, "out": out_dir, "settings": settings,
            "summary": first, "again": second, "again_out": root / "again" / "grpo"}


def test_grpo_run_saves_a_loadable_model_and_tokenizer(grpo_runs):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = grpo_runs["out"]
    model = AutoModelForCausalLM.from_pretrained(out)
    tokenizer = AutoTokenizer.from_pretrained(out)
    assert tokenizer.chat_template and tokenizer.eos_token == "<|im_end|>"
    assert model.config.use_cache is True
    # Only the model folder: no stale file, no checkpoints, no training_args.bin, no scratch siblings left.
    assert not (out / "stale.txt").exists()
    assert not list(out.glob("checkpoint-*")) and not (out / "training_args.bin").exists()
    assert sorted(p.name for p in out.parent.iterdir()) == ["grpo"]
    ids = tokenizer.apply_chat_template(question_messages(grpo_runs["questions"][0], sampling_template()),
                                        add_generation_prompt=True, return_tensors="pt", return_dict=True)
    generated = model.generate(**ids, max_new_tokens=8, do_sample=False)
    assert generated.shape[1] > ids["input_ids"].shape[1]


def test_grpo_summary_has_the_logged_steps_and_rewards(grpo_runs):
    summary, settings = grpo_runs["summary"], grpo_runs["settings"]
    assert summary["steps"] == settings.max_steps == 2
    assert summary["questions_per_step"] == 2
    assert [row["step"] for row in summary["log_history"]] == [1, 2]
    for row in summary["log_history"]:
        assert math.isfinite(row["loss"]) and 0.0 <= row["reward"] <= 1.0
    # The warm-up gives each option an equal share, so the first groups mix 0s and 1s:
    # the reward is neither all-wrong nor all-right and some group has a non-zero advantage.
    assert 0.0 < summary["reward_first"] < 1.0
    assert min(row["frac_reward_zero_std"] for row in summary["log_history"]) < 1.0
    assert summary["reward_first"] == summary["log_history"][0]["reward"]
    assert summary["reward_last"] == summary["log_history"][-1]["reward"]
    assert summary["final_loss"] == summary["log_history"][-1]["loss"]
    assert summary["seconds"] > 0
    json.dumps(summary, allow_nan=False)  # a DVC metrics file: plain JSON, no NaN


def test_grpo_changes_the_weights_towards_the_rewarded_answers(grpo_runs):
    import torch

    before, after = _weights(grpo_runs["start"]), _weights(grpo_runs["out"])
    assert before.keys() == after.keys()
    changed = [name for name in before if not torch.equal(before[name], after[name])]
    assert changed, "GRPO left every weight as it was"
    # The reward, not just noise, drove the update: the gold replies gained on the others.
    assert _gold_margin(grpo_runs["out"], grpo_runs["questions"]) > _gold_margin(grpo_runs["start"], grpo_runs["questions"])


def test_grpo_is_deterministic_for_a_seed(grpo_runs):
    first, second = grpo_runs["summary"], grpo_runs["again"]
    assert first["log_history"] == second["log_history"]
    assert (grpo_runs["out"] / "model.safetensors").read_bytes() == (grpo_runs["again_out"] / "model.safetensors").read_bytes()


def test_failed_grpo_run_leaves_the_previous_model_and_no_scratch(grpo_runs, tmp_path):
    """A run that fails inside TRL (here: a tokenizer without a chat template cannot render
    the conversational prompts) keeps the old out_dir as it was and leaves no temp folders."""
    import shutil

    broken = tmp_path / "no-template"
    shutil.copytree(grpo_runs["start"], broken)
    (broken / "chat_template.jinja").unlink()
    out_dir = tmp_path / "round-1" / "grpo"
    out_dir.mkdir(parents=True)
    (out_dir / "model.safetensors").write_bytes(b"previous model")
    with pytest.raises(ValueError, match="chat template"):
        train_grpo(broken, grpo_runs["questions"], out_dir, grpo_runs["settings"], seed=11)
    assert (out_dir / "model.safetensors").read_bytes() == b"previous model"
    assert sorted(p.name for p in out_dir.parent.iterdir()) == ["grpo"]
