"""Stage `train@<round>`: SFT from the base model, then DPO (or GRPO) from the SFT model.

Training always restarts from the base model (iReMedi): a round's data come
from the previous round's model, its weights do not. Writes
models/round-<r>/sft/ and models/round-<r>/<method>/, the round's training
summary (DVC metrics: steps, final losses, seconds, the md5 of the pair
files trained on, which is what dvc.lock records for them) and its loss
curves (DVC plots).
"""

from __future__ import annotations

import logging
from pathlib import Path

import polars as pl

from corpus.atomic import write_json
from corpus.hashing import file_md5
from corpus.config import load_params
from corpus.train.config import TrainConfig, train_config
from corpus.train.data import RecordFitter, read_jsonl
from corpus.train.profile import resolve_profile
from corpus.train.trainers import records_for, train_dpo, train_sft

log = logging.getLogger(__name__)

BASE_MODEL = Path("models/base")
QUESTIONS = Path("data/questions")


def model_dir(round_: int, phase: str) -> Path:
    return Path("models") / f"round-{round_}" / phase


def summary_path(round_: int) -> Path:
    return Path("metrics") / f"train-{round_}.json"


def details_path(round_: int) -> Path:
    return Path("metrics") / "details" / f"train-{round_}.json"


# Keys of each phase in metrics/train-<r>.json (timings vary run to run: details only).
HEADLINE = ("steps", "final_loss")


def loss_curve_path(round_: int, phase: str) -> Path:
    return Path("metrics") / "plots" / f"train-{round_}-{phase}-loss.json"


def _set_threads(config: TrainConfig) -> None:
    import torch

    if config.threads:
        torch.set_num_threads(config.threads)


def run_train(round_: int, params_path: Path = Path("params.yaml"), *, base_model: Path = BASE_MODEL,
              pairs_dir: Path | None = None, questions_dir: Path = QUESTIONS, out_root: Path = Path(".")) -> dict:
    from transformers import AutoTokenizer

    from corpus.generate.prompts import sampling_template

    params = load_params(params_path)
    config = train_config(params)
    profile = resolve_profile(config)
    _set_threads(config)
    pairs_dir = pairs_dir or Path("data/rounds") / str(round_)
    sft_path, dpo_path = pairs_dir / "sft.jsonl", pairs_dir / "dpo.jsonl"
    questions = {q["id"]: q for q in pl.read_parquet(questions_dir / "train.parquet").to_dicts()}
    fitter = RecordFitter(AutoTokenizer.from_pretrained(str(base_model)), sampling_template(), questions,
                          config.max_length)
    data = {"sft.jsonl": file_md5(sft_path)}
    provenance = {"round": round_, "profile": profile.describe(), "seed": config.seed, "base_model": str(base_model)}

    sft_records = read_jsonl(sft_path)
    sft_out = out_root / model_dir(round_, "sft")
    sft = train_sft(base_model, fitter.sft(records_for(config.sft, sft_records), str(sft_path)), len(sft_records),
                    sft_out, config, profile, {**provenance, "phase": "sft", "data": dict(data)})
    phases = {"sft": sft}

    second_out = out_root / model_dir(round_, config.method)
    if config.method == "dpo":
        data["dpo.jsonl"] = file_md5(dpo_path)
        dpo_records = read_jsonl(dpo_path)
        phases["dpo"] = train_dpo(sft_out, fitter.dpo(records_for(config.dpo, dpo_records), str(dpo_path)),
                                  len(dpo_records), second_out, config, profile,
                                  {**provenance, "phase": "dpo", "data": dict(data), "init": str(sft_out)})
    else:
        phases["grpo"] = _train_grpo(config, sft_out, questions, second_out, profile, provenance)

    summary = {
        "round": round_,
        "method": config.method,
        **{name: result.summary() for name, result in phases.items()},
        "data_md5": data,
        "profile": profile.describe(),
    }
    if _is_main_process():
        # The DVC metric holds what runs are compared on; the rest (records, truncation,
        # the md5 of the pair files, the profile) goes to the details file beside it.
        write_json(out_root / summary_path(round_),
                   {name: {key: summary[name][key] for key in HEADLINE} for name in phases})
        write_json(out_root / details_path(round_), summary)
        for name, result in phases.items():
            write_json(out_root / loss_curve_path(round_, name), result.log_history)
    return summary


def _is_main_process() -> bool:
    from accelerate import PartialState

    return PartialState().is_main_process


def _train_grpo(config: TrainConfig, sft_out: Path, questions: dict[str, dict], out: Path, profile, provenance: dict):
    """GRPO from the SFT model on the train questions, reward from the project's parser."""
    from corpus.train.grpo import GRPOSettings, grpo_phase

    return grpo_phase(sft_out, sorted(questions.values(), key=lambda q: q["id"]), out,
                      GRPOSettings.from_params(config.grpo), seed=config.seed, profile=profile,
                      provenance={**provenance, "init": str(sft_out)})
