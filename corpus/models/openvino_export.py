"""Export a local Hugging Face causal LM to a stateful OpenVINO IR folder.

The folder holds what `openvino_genai.ContinuousBatchingPipeline(folder, ...)`
loads: `openvino_model.xml/.bin` (the LM), `openvino_tokenizer.xml` and
`openvino_detokenizer.xml` (openvino-tokenizers), the HF config, generation
config and tokenizer files, and `export.json` (versions, weight format, the
source model's identity and folder).

Why our own exporter and not optimum-intel: optimum-intel's export pins other
transformers and torch versions than the project's (in a clean venv it pulled
transformers 5.5.4 and another torch), which would mean a second environment
to build and keep. The conversion needs little: trace the model with the
project's own torch and transformers through `openvino.convert_model` with
its KV cache as flat inputs and outputs, then hide the cache inside the model
as state (the form GenAI expects, with a `beam_idx` input that reorders it).
Only the runtime packages (openvino, openvino-genai, openvino-tokenizers,
nncf for int8) join the project's venv, and none of them moves a pin.
"""

from __future__ import annotations

import importlib.metadata
import json
import re
import shutil
import warnings
from pathlib import Path

from corpus.atomic import atomic_dir
from corpus.errors import ConfigError

# Bump when the exported graph changes for the same source and versions.
EXPORTER = "corpus.models.openvino_export"
EXPORTER_VERSION = 1
WEIGHT_FORMATS = ("fp32", "fp16", "int8")
EXPORT_JSON = "export.json"
# Copied beside the IR: GenAI reads generation_config.json (EOS ids); the HF
# files let the log-probability fallback and prompt building use the source tokenizer.
_HF_FILES = ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
             "special_tokens_map.json", "chat_template.jinja")
_RUNTIME_DISTS = ("openvino", "openvino-genai", "openvino-tokenizers", "torch", "transformers")


def _flat_cache_module(model, n_layers: int):
    """The model with its KV cache as positional tensors, so tracing sees plain inputs/outputs."""
    import torch
    from transformers.cache_utils import DynamicCache

    class FlatCache(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model

        def forward(self, input_ids, attention_mask, position_ids, *past):
            cache = DynamicCache(config=self.model.config)
            # Filling the layers directly: DynamicLayer.update would first concatenate onto an
            # empty 1-D tensor, which the OpenVINO frontend cannot type.
            for index, layer in enumerate(cache.layers):
                layer.dtype, layer.device = past[2 * index].dtype, past[2 * index].device
                layer.keys, layer.values = past[2 * index], past[2 * index + 1]
                layer.is_initialized = True
            out = self.model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                             past_key_values=cache, use_cache=True)
            flat = []
            for layer in out.past_key_values.layers:
                flat += [layer.keys, layer.values]
            return (out.logits, *flat)

    if len(DynamicCache(config=model.config).layers) != n_layers:
        raise ConfigError(f"{model.config.name_or_path}: cache layers differ from num_hidden_layers")
    return FlatCache()


def _kv_geometry(model) -> tuple[int, int, int]:
    """(layers, kv heads, head size) read from one real forward pass, not guessed from the config."""
    import torch

    with torch.no_grad():
        out = model(input_ids=torch.ones(1, 2, dtype=torch.long), use_cache=True)
    layers = out.past_key_values.layers
    if any(type(layer).__name__ != "DynamicLayer" for layer in layers):
        raise ConfigError(f"{model.config.name_or_path}: only models with a plain (non-sliding) KV cache export; "
                          f"found {sorted({type(layer).__name__ for layer in layers})}")
    keys = layers[0].keys
    return len(layers), int(keys.shape[1]), int(keys.shape[3])


def _trace(model):
    """torch model -> stateless ov.Model with named inputs/outputs (past_key_values.i.key / present.i.key)."""
    import openvino as ov
    import torch

    n_layers, kv_heads, head_size = _kv_geometry(model)
    batch, past_len, new_len = 2, 3, 4
    example = (torch.ones(batch, new_len, dtype=torch.long),
               torch.ones(batch, past_len + new_len, dtype=torch.long),
               torch.arange(past_len, past_len + new_len).repeat(batch, 1))
    example += tuple(torch.zeros(batch, kv_heads, past_len, head_size) for _ in range(2 * n_layers))
    kv_pairs = [(i, part) for i in range(n_layers) for part in ("key", "value")]
    in_names = ["input_ids", "attention_mask", "position_ids"] + [f"past_key_values.{i}.{p}" for i, p in kv_pairs]
    out_names = ["logits"] + [f"present.{i}.{p}" for i, p in kv_pairs]
    shapes = [ov.PartialShape([-1, -1])] * 3 + [ov.PartialShape([-1, kv_heads, -1, head_size])] * (2 * n_layers)
    # The TracerWarnings are transformers' shape checks (cache length, mask padding), whose
    # branch is the same for every input GenAI feeds (mask as long as past + new tokens).
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        ov_model = ov.convert_model(_flat_cache_module(model, n_layers), example_input=example, input=shapes)
    for name, port in zip(in_names, ov_model.inputs):
        port.get_tensor().set_names({name})
    for name, port in zip(out_names, ov_model.outputs):
        port.get_tensor().set_names({name})
    return ov_model, in_names[3:], out_names[1:]


def _make_stateful(ov_model, kv_inputs: list[str], kv_outputs: list[str]) -> None:
    """Hide the KV cache as ReadValue/Assign state; add the `beam_idx` input GenAI feeds."""
    import numpy as np
    import openvino as ov
    from openvino import opset13
    from openvino._offline_transformations import apply_make_stateful_transformation

    # beam_idx reorders the cached batch rows before each step (GenAI's stateful contract);
    # it must exist before the cache inputs become state.
    batch = ov_model.input("input_ids").get_partial_shape()[0]
    beam_idx = opset13.parameter(ov.PartialShape([batch]), ov.Type.i32, name="beam_idx")
    beam_idx.output(0).get_tensor().set_names({"beam_idx"})
    ov_model.add_parameters([beam_idx])
    for name in kv_inputs:
        port = ov_model.input(name)
        consumers = list(port.get_target_inputs())
        reordered = opset13.gather(port, beam_idx, opset13.constant(0))
        for consumer in consumers:
            consumer.replace_source_output(reordered.output(0))
    ov_model.validate_nodes_and_infer_types()
    apply_make_stateful_transformation(ov_model, dict(zip(kv_inputs, kv_outputs)))
    # Each state starts as zeros of shape [batch of input_ids, kv heads, 0, head size].
    ids_shape = opset13.shape_of(ov_model.input("input_ids"), output_type="i64")
    rows = opset13.gather(ids_shape, opset13.constant([0]), opset13.constant(0))
    for op in ov_model.get_ops():
        if op.get_type_name() == "ReadValue":
            dims = [dim.min_length for dim in op.get_output_partial_shape(0)]
            shape = opset13.concat([rows] + [opset13.constant(np.array([d], dtype=np.int64)) for d in dims[1:]], 0)
            zeros = opset13.constant(0.0, dtype=op.get_output_element_type(0))
            op.set_arguments([opset13.broadcast(zeros, shape)])
    ov_model.validate_nodes_and_infer_types()


def _compress(ov_model, weight_format: str):
    """Weight-only compression; activations and the KV cache keep the runtime's precision."""
    if weight_format != "int8":
        return ov_model
    try:
        import nncf
    except ImportError:
        raise ConfigError("weight_format int8 needs nncf (`pip install nncf==3.4.0`; make install does it)") from None
    # Asymmetric per-channel int8 on every MatMul/Gather weight: nncf's default INT8 mode.
    return nncf.compress_weights(ov_model, mode=nncf.CompressWeightsMode.INT8_ASYM)


# OpenVINO names unnamed nodes <Type>_<process-wide counter>: a second export in the same
# process would write other names, so other bytes, for the same graph.
_COUNTER_NAME = re.compile(r"[A-Za-z0-9]+_\d+(\.\d+)?")


def _stable_names(ov_model, name: str):
    """Counter-numbered node (and their tensor) names -> numbered by position in the graph."""
    ov_model.set_friendly_name(name)
    for index, op in enumerate(ov_model.get_ordered_ops()):
        old = op.get_friendly_name()
        if not _COUNTER_NAME.fullmatch(old):
            continue
        new = f"{op.get_type_name()}_{index}"
        op.set_friendly_name(new)
        for output in op.outputs():
            names = output.get_names()
            if old in names:
                output.get_tensor().set_names((set(names) - {old}) | {new})
    return ov_model


def _versions(weight_format: str) -> dict:
    dists = list(_RUNTIME_DISTS) + (["nncf"] if weight_format == "int8" else [])
    return {dist: importlib.metadata.version(dist) for dist in dists}


def export_openvino(model_dir: Path, out_dir: Path, weight_format: str = "fp32") -> dict:
    """Write the IR folder for `model_dir` at `out_dir` (atomically); return the export record."""
    import openvino as ov
    import openvino_tokenizers
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from corpus.generate.backends import model_identity

    model_dir, out_dir = Path(model_dir), Path(out_dir)
    if weight_format not in WEIGHT_FORMATS:
        raise ConfigError(f"openvino weight_format {weight_format!r}: expected one of {', '.join(WEIGHT_FORMATS)}")
    identity = model_identity(model_dir)  # also checks it is a HF folder
    # sdpa: the traced graph then holds ScaledDotProductAttention, which GenAI's
    # continuous batching rewrites into its paged attention.
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, attn_implementation="sdpa").eval()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    ov_model, kv_inputs, kv_outputs = _trace(model)
    del model
    _make_stateful(ov_model, kv_inputs, kv_outputs)
    ov_model = _compress(ov_model, weight_format)
    ov_tokenizer, ov_detokenizer = openvino_tokenizers.convert_tokenizer(tokenizer, with_detokenizer=True)
    record = {
        "exporter": EXPORTER,
        "exporter_version": EXPORTER_VERSION,
        "versions": _versions(weight_format),
        "weight_format": weight_format,
        "source_model": str(model_dir),
        "source_identity": identity,
        "kv_layers": len(kv_inputs) // 2,
    }
    with atomic_dir(out_dir) as staging:
        ov.save_model(_stable_names(ov_model, "model"), staging / "openvino_model.xml",
                      compress_to_fp16=weight_format == "fp16")
        ov.save_model(_stable_names(ov_tokenizer, "tokenizer"), staging / "openvino_tokenizer.xml")
        ov.save_model(_stable_names(ov_detokenizer, "detokenizer"), staging / "openvino_detokenizer.xml")
        for name in _HF_FILES:
            if (model_dir / name).is_file():
                shutil.copyfile(model_dir / name, staging / name)
        (staging / EXPORT_JSON).write_text(json.dumps(record, sort_keys=True, indent=2) + "\n", encoding="utf-8")
    return record


def read_export(ir_dir: Path) -> dict:
    """The export record of an IR folder; a clear error when the folder is not one of ours."""
    path = Path(ir_dir) / EXPORT_JSON
    if not path.is_file():
        raise ConfigError(f"{ir_dir}: not an OpenVINO export folder (no {EXPORT_JSON}); "
                          "run `dvc repro export_openvino` or corpus.models.openvino_export")
    return json.loads(path.read_text(encoding="utf-8"))
