"""DVC stage `export_openvino@<round>`: the round's generator -> <generator>-ov/ (OpenVINO IR).

Runs for every round whatever the backend, so dvc.yaml needs no per-backend
variant: where sample.backend (auto: by CPU family) resolves to openvino it
exports the IR (about 30 s for SmolLM2-135M); elsewhere it writes only
export.json saying why nothing was exported (instant, same bytes every run, so
the sample stage that depends on it is not re-run for it).
"""

import argparse
import json
import logging
from pathlib import Path

from _entry import main

from corpus.atomic import atomic_dir
from corpus.config import load_params, rounds_config, sample_config
from corpus.errors import ConfigError
from corpus.generate.auto_backend import resolve_backend
from corpus.generate.openvino_backend import ir_folder
from corpus.models.openvino_export import EXPORT_JSON, export_openvino

log = logging.getLogger("corpus")


def run_export(round_: int, params_path: Path = Path("params.yaml")) -> dict:
    params = load_params(params_path)
    config = sample_config(params)
    rounds = rounds_config(params)
    if round_ not in rounds:
        raise ConfigError(f"params.yaml rounds: no entry for round {round_} (have {sorted(rounds)})")
    model = rounds[round_].generator
    out = ir_folder(model)
    backend, family = resolve_backend(config.backend)
    if backend == "openvino":
        record = export_openvino(model, out, config.openvino.weight_format)
        log.info("round %d: %s exported to %s (%s)", round_, model, out, record["weight_format"])
        return record
    record = {"exported": False, "backend": backend, "cpu_family": family,
              "reason": f"sample.backend {config.backend} resolves to {backend} on CPU family {family}"}
    with atomic_dir(out) as staging:
        (staging / EXPORT_JSON).write_text(json.dumps(record, sort_keys=True, indent=2) + "\n", encoding="utf-8")
    log.info("round %d: no OpenVINO export (%s)", round_, record["reason"])
    return record


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--round", type=int, required=True)
    args = parser.parse_args()
    main(lambda: run_export(args.round))
