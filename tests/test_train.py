"""Training pieces: history fitting, the two profiles, deterministic TRL SFT/DPO on the tiny model,
no half-written checkpoint on failure, and one SFT step as two CPU processes (DDP over gloo)."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from corpus.errors import ConfigError, CorpusError
from corpus.generate.prompts import question_messages, sampling_template
from corpus.hashing import file_sha256
from corpus.train.config import DPOPhaseConfig, GPUConfig, LoRAConfig, PhaseConfig, TrainConfig, train_config
from corpus.train.data import OMITTED, RecordFitter, fit_context
from corpus.train.profile import load_deepspeed_config, resolve_profile, training_kwargs
from corpus.train.trainers import PhaseResult, records_for, train_dpo, train_sft
from tests.conftest import REPO
from tests.tiny_model import CLINICAL_SENTENCES, build_tiny_model

CONTEXT = "\n".join([
    "Patient EHR context (visits in order; the last one is the current visit):",
    "", "Visit 0:", "Conditions:", "1. Sepsis", "2. Acute kidney failure",
    "", "Visit 1:", "Conditions:", "1. Pneumonia (new)", "Medications:", "1. Heparin",
    "", "Visit 2:", "Conditions:", "1. Congestive heart failure (new)", "Medications:", "1. Furosemide", "2. Insulin",
])


def _question(qid: str, answer: str = "No") -> dict:
    return {"id": qid, "task": "mortality", "subject_id": 1, "hadm_id": 2, "context": CONTEXT,
            "question": CLINICAL_SENTENCES[5] + " Answer Yes or No.", "options": ["Yes", "No"], "answer": answer}


def test_fit_context_drops_whole_oldest_visits_first():
    kept, cut = fit_context(CONTEXT, lambda text: "Visit 0:" not in text)
    assert cut and kept.splitlines()[:2] == [CONTEXT.splitlines()[0], OMITTED]
    assert "Visit 1:" in kept and kept.endswith("2. Insulin")


def test_fit_context_cuts_lines_of_the_current_visit_only_when_it_alone_is_too_long():
    kept, cut = fit_context(CONTEXT, lambda text: len(text.splitlines()) <= 5)
    assert cut and len(kept.splitlines()) == 5 and kept.endswith("2. Insulin") and "Visit 1:" not in kept
    untouched, cut = fit_context(CONTEXT, lambda text: True)
    assert untouched == CONTEXT and not cut


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("train-tiny"))


def _sft_record(question: dict, text: str) -> dict:
    prompt = question_messages(question, sampling_template())
    return {"id": f"s-{question['id']}", "question_id": question["id"], "prompt": prompt,
            "completion": [{"role": "assistant", "content": text}]}


def _dpo_record(question: dict, chosen: str, rejected: str) -> dict:
    prompt = question_messages(question, sampling_template())
    return {"id": f"d-{question['id']}", "question_id": question["id"], "prompt": prompt,
            "chosen": [{"role": "assistant", "content": chosen}],
            "rejected": [{"role": "assistant", "content": rejected}]}


def test_fitter_keeps_short_prompts_as_the_pairs_stage_wrote_them_and_cuts_long_ones(tiny):
    from transformers import AutoTokenizer

    question = _question("q1")
    record = _sft_record(question, "The patient is stable. \\boxed{No}")
    tokenizer = AutoTokenizer.from_pretrained(tiny)
    roomy = RecordFitter(tokenizer, sampling_template(), {"q1": question}, 4096).sft([record], "sft.jsonl")
    assert roomy.rows[0]["prompt"] == record["prompt"] and roomy.truncated == 0
    full = len(tokenizer.apply_chat_template(record["prompt"] + record["completion"], tokenize=True)["input_ids"])
    tight = RecordFitter(tokenizer, sampling_template(), {"q1": question}, full - 20).sft([record], "sft.jsonl")
    user = tight.rows[0]["prompt"][1]["content"]
    assert tight.truncated == 1 and tight.over_budget == 0 and OMITTED in user
    # The question, its answer format and the completion survive the cut.
    assert question["question"] in user and "\\boxed{{ANSWER}}".replace("{{", "{").replace("}}", "}") in user
    assert tight.rows[0]["completion"] == record["completion"]
    # Too long even with no history left: left out and counted, never cut at the answer.
    hopeless = RecordFitter(tokenizer, sampling_template(), {"q1": question}, 40).sft([record], "sft.jsonl")
    assert hopeless.rows == [] and hopeless.over_budget == 1
    with pytest.raises(CorpusError, match="sft.jsonl: record s-q9 names question q9"):
        RecordFitter(tokenizer, sampling_template(), {}, 512).sft([_sft_record(_question("q9"), "x")], "sft.jsonl")


def test_records_for_caps_by_records_and_by_what_max_steps_consumes():
    records = [{"id": f"{i:02d}"} for i in range(20)]
    assert [r["id"] for r in records_for(PhaseConfig(max_steps=2, gradient_accumulation_steps=3), records[::-1])] == \
        [f"{i:02d}" for i in range(6)]
    assert len(records_for(PhaseConfig(max_records=4), records)) == 4
    assert len(records_for(PhaseConfig(), records)) == 20


def test_params_yaml_builds_and_bad_values_name_their_key():
    import yaml

    config = train_config(yaml.safe_load((REPO / "params.yaml").read_text()))
    assert config.profile == "cpu" and config.method == "dpo"
    with pytest.raises(ConfigError, match="train.profile"):
        train_config({"train": {"profile": "tpu"}})
    with pytest.raises(ConfigError, match=r"train.sft: unknown key\(s\) lr"):
        train_config({"train": {"sft": {"lr": 1}}})


def test_cpu_profile_is_float32_and_deterministic():
    profile = resolve_profile(TrainConfig())
    kwargs = training_kwargs(TrainConfig(), PhaseConfig(), profile, Path("/tmp/x"))
    assert profile.dtype == "float32" and kwargs["use_cpu"] and not kwargs["bf16"] and kwargs["full_determinism"]
    assert "deepspeed" not in kwargs


def test_gpu_profile_built_on_cpu_falls_back_where_packages_are_missing(caplog):
    import importlib.util

    config = TrainConfig(profile="gpu", gpu=GPUConfig(deepspeed=REPO / "configs" / "deepspeed_zero2.json"))
    with pytest.raises(ConfigError, match="no CUDA device"):
        resolve_profile(config, cuda_available=False)
    with caplog.at_level(logging.WARNING):
        profile = resolve_profile(config, cuda_available=True)
    kwargs = training_kwargs(config, PhaseConfig(), profile, Path("/tmp/x"))
    assert profile.dtype == "bfloat16" and kwargs["bf16"] and kwargs["gradient_checkpointing"]
    has_flash = importlib.util.find_spec("flash_attn") is not None
    assert profile.attn_implementation == ("flash_attention_2" if has_flash else "sdpa")
    if importlib.util.find_spec("deepspeed") is None:
        assert profile.deepspeed is None and "deepspeed" not in kwargs and "deepspeed package is not installed" in caplog.text
    else:
        assert kwargs["deepspeed"].endswith("deepspeed_zero2.json")


def test_deepspeed_configs_in_the_repo_parse_and_a_broken_one_names_its_file(tmp_path):
    for name in ("deepspeed_zero2.json", "deepspeed_zero3.json"):
        stage = load_deepspeed_config(REPO / "configs" / name)["zero_optimization"]["stage"]
        assert stage == int(name[-6])
    broken = tmp_path / "ds.json"
    broken.write_text("{ not json")
    with pytest.raises(ConfigError, match="ds.json: not valid JSON"):
        load_deepspeed_config(broken)


def _tiny_config(**changes) -> TrainConfig:
    phase = dict(learning_rate=1e-3, max_steps=2, per_device_batch_size=1, gradient_accumulation_steps=1)
    # The tiny tokenizer writes these prompts in ~400 tokens: 1024 leaves the history whole.
    return replace(TrainConfig(max_length=1024, sft=PhaseConfig(**phase), dpo=DPOPhaseConfig(beta=0.1, **phase)),
                   **changes)


def _fitted(tiny, questions, records, kind):
    from transformers import AutoTokenizer

    fitter = RecordFitter(AutoTokenizer.from_pretrained(tiny), sampling_template(),
                          {q["id"]: q for q in questions}, 1024)
    return getattr(fitter, kind)(records, kind)


@pytest.fixture(scope="module")
def trained(tiny, tmp_path_factory):
    """SFT then DPO on the tiny model, twice with the same inputs and seed."""
    import torch

    torch.set_num_threads(1)
    questions = [_question("q1", "No"), _question("q2", "Yes")]
    sft_records = [_sft_record(q, f"Reasoning about the visits. \\boxed{{{q['answer']}}}") for q in questions]
    dpo_records = [_dpo_record(q, f"Stable. \\boxed{{{q['answer']}}}", "Unclear. \\boxed{Maybe}") for q in questions]
    config = _tiny_config()
    profile = resolve_profile(config)
    runs = []
    for attempt in range(2):
        root = tmp_path_factory.mktemp(f"run{attempt}")
        sft = train_sft(tiny, _fitted(tiny, questions, sft_records, "sft"), 2, root / "sft", config, profile, {})
        dpo = train_dpo(root / "sft", _fitted(tiny, questions, dpo_records, "dpo"), 2, root / "dpo", config, profile, {})
        runs.append((root, sft, dpo))
    return runs


def test_sft_then_dpo_write_loadable_folders_with_their_steps(trained):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    root, sft, dpo = trained[0]
    for result in (sft, dpo):
        assert isinstance(result, PhaseResult) and result.steps == 2 and result.final_loss is not None
        assert [row["step"] for row in result.log_history] == [1, 2]
    for phase in ("sft", "dpo"):
        AutoModelForCausalLM.from_pretrained(root / phase)
        assert AutoTokenizer.from_pretrained(root / phase).chat_template
        assert json.loads((root / phase / "training.json").read_text())["steps"] == 2
    assert file_sha256(root / "sft" / "model.safetensors") != file_sha256(root / "dpo" / "model.safetensors")
    assert not [p for p in root.iterdir() if p.name.startswith(".")]  # no scratch left


def test_training_is_deterministic_on_cpu(trained):
    (first, sft_a, dpo_a), (second, sft_b, dpo_b) = trained
    assert abs(sft_a.final_loss - sft_b.final_loss) < 1e-6 and abs(dpo_a.final_loss - dpo_b.final_loss) < 1e-6
    for phase in ("sft", "dpo"):
        # Every file of the folder, training.json included: DVC hashes the folder, and the next
        # round's sample stage depends on it.
        files = sorted(p.name for p in (first / phase).iterdir())
        assert files == sorted(p.name for p in (second / phase).iterdir()) and "training.json" in files
        for name in files:
            assert file_sha256(first / phase / name) == file_sha256(second / phase / name), name


def test_lora_adapters_are_merged_into_a_plain_checkpoint(tiny, tmp_path):
    from safetensors import safe_open

    questions = [_question("q1")]
    records = [_sft_record(questions[0], "Stable course. \\boxed{No}")]
    config = _tiny_config(lora=LoRAConfig(enabled=True, r=4, alpha=8))
    train_sft(tiny, _fitted(tiny, questions, records, "sft"), 1, tmp_path / "sft", config, resolve_profile(config), {})
    with safe_open(tmp_path / "sft" / "model.safetensors", "pt") as handle:
        names = set(handle.keys())
    with safe_open(tiny / "model.safetensors", "pt") as handle:
        assert names == set(handle.keys())  # same tensors as the base: no lora_A / lora_B left


def test_a_phase_without_records_copies_its_input_and_says_so(tiny, tmp_path):
    config = _tiny_config()
    empty = _fitted(tiny, [], [], "dpo")
    result = train_dpo(tiny, empty, 0, tmp_path / "dpo", config, resolve_profile(config), {})
    assert result.steps == 0 and "copy of its input model" in result.skipped
    assert file_sha256(tmp_path / "dpo" / "model.safetensors") == file_sha256(tiny / "model.safetensors")


def test_failed_training_keeps_the_previous_checkpoint_and_leaves_no_scratch(tiny, tmp_path):
    out = tmp_path / "sft"
    out.mkdir()
    (out / "model.safetensors").write_bytes(b"previous")
    questions = [_question("q1")]
    fitted = _fitted(tiny, questions, [_sft_record(questions[0], "x \\boxed{No}")], "sft")
    broken = _tiny_config(sft=PhaseConfig(learning_rate=1e-3, max_steps=1, lr_scheduler="no-such-schedule"))
    with pytest.raises(Exception):
        train_sft(tiny, fitted, 1, out, broken, resolve_profile(broken), {})
    assert (out / "model.safetensors").read_bytes() == b"previous"
    assert [p.name for p in tmp_path.iterdir()] == ["sft"]


DDP_SCRIPT = """
import json, sys
from pathlib import Path
from corpus.generate.prompts import question_messages, sampling_template
from corpus.train.profile import resolve_profile
from corpus.train.trainers import train_sft
from tests.test_train import _fitted, _question, _sft_record, _tiny_config
tiny, out = Path(sys.argv[1]), Path(sys.argv[2])
questions = [_question("q1", "No"), _question("q2", "Yes")]
records = [_sft_record(q, "Reasoning. \\\\boxed{%s}" % q["answer"]) for q in questions]
config = _tiny_config()
result = train_sft(tiny, _fitted(tiny, questions, records, "sft"), 2, out, config, resolve_profile(config), {})
from accelerate import PartialState
state = PartialState()
print(json.dumps({"rank": state.process_index, "world": state.num_processes, "steps": result.steps,
                  "backend": state.backend}))
"""


def test_one_sft_run_as_two_cpu_processes_over_gloo(tiny, tmp_path):
    """Two processes under torchrun; accelerate (inside the Trainer) joins them over gloo.

    `accelerate launch --cpu --num_processes 2` cannot do this here: its multi-CPU
    path needs mpirun and a hostfile, and --multi_gpu refuses --cpu; it starts
    one process. torchrun sets RANK/WORLD_SIZE and accelerate takes it from there.
    """
    script = tmp_path / "ddp_sft.py"
    script.write_text(DDP_SCRIPT)
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", ACCELERATE_USE_CPU="true")
    done = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29533",
         str(script), str(tiny), str(tmp_path / "sft")],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    reports = [json.loads(line) for line in done.stdout.splitlines() if line.startswith('{"rank"')]
    assert sorted(r["rank"] for r in reports) == [0, 1] and {r["world"] for r in reports} == {2}
    assert {r["backend"] for r in reports} == {"gloo"}
    assert {r["steps"] for r in reports} == {2}  # max_steps, the same on both ranks
    # One process wrote the folder (a race would leave scratch or a broken file).
    from transformers import AutoModelForCausalLM

    AutoModelForCausalLM.from_pretrained(tmp_path / "sft")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ddp_sft.py", "sft"]
