"""Backend `openvino`: sampling through OpenVINO GenAI's ContinuousBatchingPipeline on CPU.

One request per sample with its own seed (`GenerationConfig.rng_seed`), so any
sample can be drawn again alone. Prefix caching shares the prefill of prompts
that start alike, but `add_request` looks cached blocks up only when a request
arrives: requests are therefore sorted by prompt tokens (shared prefixes
adjacent) and added one per `step()`, so each finds its neighbour's prefix
already computed (issue 17: 56.8 tok/s this way, 25.0 with all prompts in one
`generate()` call, on a 2-core Zen 3).

What decides a sample (measured on SmolLM2-135M, 8 samples of 4 prompts that
share a prefix, corpus/generate/openvino_backend.py's defaults): with f32
inference and an f32 KV cache, a sample is the same drawn alone, in a batch,
in reverse order, with the prefix cache warm or cold, and with 1 or 2 threads.
With the CPU plugin's own defaults on an AMX machine (bf16 inference, u8 KV
cache) 6 of the 8 changed between alone and batched; with f32 inference and a
u8 KV cache they matched alone but 2 of 8 changed when drawn again with the
prefix cache warm. The precisions are therefore set (f32 by default) and in
the fingerprint, with the threads and the scheduler bounds.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import logging
import os
from collections.abc import Sequence
from pathlib import Path

from corpus.errors import ConfigError
from corpus.generate.backends import Generator, SamplingConfig, model_identity
from corpus.generate.cache import Generation

log = logging.getLogger(__name__)

PRECISIONS = ("f32", "bf16", "f16")
KV_PRECISIONS = ("f32", "bf16", "f16", "u8")


def ir_folder(model_path: Path) -> Path:
    """Where the export stage writes a model's IR: models/base -> models/base-ov."""
    model_path = Path(model_path)
    return model_path.with_name(model_path.name + "-ov")


def ir_identity(ir_dir: Path) -> str:
    """sha256 over the exported LM's graph and weights (the tokenizer IR follows from the source)."""
    digest = hashlib.sha256()
    for name in ("openvino_model.xml", "openvino_model.bin"):
        digest.update(name.encode())
        with open(Path(ir_dir) / name, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 22), b""):
                digest.update(block)
    return digest.hexdigest()[:16]


def checked_export(model_path: Path, ir_dir: Path, weight_format: str) -> dict:
    """The export record of `ir_dir`, refused unless it is `model_path` exported in `weight_format`."""
    from corpus.models.openvino_export import read_export

    record = read_export(ir_dir)
    if not record.get("exported", True):
        raise ConfigError(f"{ir_dir}: {record.get('reason', 'no IR exported')}; set sample.backend openvino "
                          "(or auto on a CPU family that resolves to it) and run `dvc repro` to export")
    identity = model_identity(model_path)
    if record["source_identity"] != identity or record["weight_format"] != weight_format:
        raise ConfigError(f"{ir_dir}: exported from model {record['source_identity']} in "
                          f"{record['weight_format']}, but sampling wants {model_path} ({identity}) in "
                          f"{weight_format}: re-run the export stage (dvc repro)")
    return record


def ensure_ir(model_path: Path, weight_format: str, cache_root: Path) -> Path:
    """The IR folder for `model_path`: the export stage's (`<model>-ov`) when it matches, else one
    exported once into `cache_root/<identity>-<format>` (evaluation's models have no export stage)."""
    from corpus.models.openvino_export import EXPORT_JSON, export_openvino

    staged = ir_folder(model_path)
    if (staged / EXPORT_JSON).is_file():
        try:
            checked_export(model_path, staged, weight_format)
            return staged
        except ConfigError as error:
            log.info("%s not used: %s", staged, error)
    cached = Path(cache_root) / f"{model_identity(model_path)}-{weight_format}"
    if not (cached / EXPORT_JSON).is_file():
        log.info("exporting %s to OpenVINO IR (%s) at %s", model_path, weight_format, cached)
        export_openvino(model_path, cached, weight_format)
    return cached


class OpenVINOGenerator(Generator):
    """CPU: OpenVINO GenAI continuous batching with prefix caching, one seeded request per sample."""

    backend = "openvino"

    def __init__(self, model_path: Path, sampling: SamplingConfig, template_hash: str, *, ir_dir: Path,
                 weight_format: str = "fp32", threads: int | None = None, inference_precision: str = "f32",
                 kv_cache_precision: str = "f32", max_num_batched_tokens: int = 8192, max_num_seqs: int = 256,
                 cache_size_gb: int = 2, cpu_family: str | None = None):
        import openvino as ov
        import openvino_genai as og
        from transformers import AutoTokenizer

        from corpus.cpu import cpu_family as detect_family

        if inference_precision not in PRECISIONS or kv_cache_precision not in KV_PRECISIONS:
            raise ConfigError(f"sample.openvino: inference_precision must be one of {PRECISIONS} and "
                              f"kv_cache_precision one of {KV_PRECISIONS}, found {inference_precision!r}, "
                              f"{kv_cache_precision!r}")
        record = checked_export(model_path, ir_dir, weight_format)
        super().__init__(str(model_path), sampling, template_hash, record["source_identity"])
        self.ir_dir = Path(ir_dir)
        threads = threads or len(os.sched_getaffinity(0))
        properties = {"INFERENCE_NUM_THREADS": threads, "INFERENCE_PRECISION_HINT": inference_precision,
                      "KV_CACHE_PRECISION": kv_cache_precision}
        scheduler = og.SchedulerConfig()
        scheduler.enable_prefix_caching = True
        scheduler.max_num_batched_tokens = max_num_batched_tokens
        scheduler.max_num_seqs = max_num_seqs
        scheduler.cache_size = cache_size_gb  # GB of KV blocks, allocated up front
        self._ov = ov
        self._pipe = og.ContinuousBatchingPipeline(str(ir_dir), scheduler, "CPU", properties)
        self._properties = properties
        # What ran, as the plugin reports it for these properties (not what was asked).
        core = ov.Core()
        core.set_property("CPU", properties)
        ran = {key: core.get_property("CPU", key).to_string() for key in ("INFERENCE_PRECISION_HINT", "KV_CACHE_PRECISION")}
        self.fingerprint.update({
            "ir": {"identity": ir_identity(ir_dir), "weight_format": weight_format,
                   "exporter": f"{record['exporter']}@{record['exporter_version']}",
                   "export_versions": record["versions"]},
            "runtime": {dist: importlib.metadata.version(dist)
                        for dist in ("openvino", "openvino-genai", "openvino-tokenizers")},
            "inference_precision": ran["INFERENCE_PRECISION_HINT"],
            "kv_cache_precision": ran["KV_CACHE_PRECISION"],
            "threads": threads,
            "scheduler": {"max_num_batched_tokens": max_num_batched_tokens, "max_num_seqs": max_num_seqs,
                          "cache_size_gb": cache_size_gb, "prefix_caching": True, "feed": "sorted, one per step"},
            # The ISA decides the kernels, and with them the last bits of the logits.
            "cpu_family": cpu_family or detect_family(),
        })
        # The HF tokenizer beside the IR (copied by the export): prompts are built exactly as the
        # transformers backend builds them, and samples decoded the same way.
        self._tokenizer = AutoTokenizer.from_pretrained(str(ir_dir))
        self._stop_ids = self._stop_token_ids()
        self._scorer = None

    def _stop_token_ids(self) -> set[int]:
        """The tokens that end a sample, as the transformers backend's hf_sampler.stop_token_ids."""
        ids = set(self._pipe.get_config().stop_token_ids)
        if self._tokenizer.eos_token_id is not None:
            ids.add(int(self._tokenizer.eos_token_id))
        im_end = self._tokenizer.get_vocab().get("<|im_end|>")
        if im_end is not None:
            ids.add(int(im_end))
        return ids

    def _prompt_ids(self, messages: Sequence[dict]) -> list[int]:
        ids = self._tokenizer.apply_chat_template(list(messages), add_generation_prompt=True, tokenize=True)
        return list(ids["input_ids"] if hasattr(ids, "keys") else ids)

    def _config(self, seed: int):
        import openvino_genai as og

        config = og.GenerationConfig()
        config.max_new_tokens = self.sampling.max_new_tokens
        config.num_return_sequences = 1
        config.stop_token_ids = self._stop_ids
        config.eos_token_id = min(self._stop_ids)
        if self.sampling.temperature <= 0:  # evaluation: greedy
            config.do_sample = False
        else:
            config.do_sample = True
            config.temperature = self.sampling.temperature
            config.top_p = self.sampling.top_p
            config.top_k = 0  # no top-k cut: top-p alone, as the other backends
            config.rng_seed = seed
        return config

    def generate(self, requests, missing, on_tokens=None):
        import numpy as np
        import openvino_genai as og

        todo = [(self._prompt_ids(r.messages), r.key, r) for r in requests if r.key in missing]
        todo.sort(key=lambda item: (item[0], item[1]))  # shared prefixes adjacent; key breaks ties
        handles, finished = {}, {}
        pending = list(reversed(todo))

        def collect():
            for key in [k for k, h in handles.items() if h.get_status() != og.GenerationStatus.RUNNING]:
                handle = handles.pop(key)
                if handle.get_status() != og.GenerationStatus.FINISHED:
                    raise RuntimeError(f"openvino: request {key} ended {handle.get_status()}")
                output = handle.read_all()[0]
                tokens = list(output.generated_ids)
                reason = "eos" if tokens and tokens[-1] in self._stop_ids else "length"
                text = self._tokenizer.decode(tokens, skip_special_tokens=True)
                finished[key] = Generation(text, len(tokens), reason)
                if on_tokens:
                    on_tokens(len(tokens))

        request_id = 0
        while pending or handles:
            if pending:  # one new request per step: it finds the previous prompts' blocks cached
                ids, key, request = pending.pop()
                tensor = self._ov.Tensor(np.array([ids], dtype=np.int64))
                handles[key] = self._pipe.add_request(request_id, tensor, self._config(request.seed))
                request_id += 1
            self._pipe.step()
            collect()
            if finished:  # every finished sample goes to the cache at once: a SIGKILL loses none of them
                yield dict(finished)
                finished.clear()

    def option_logprobs(self, messages, options):
        """Summed log-probabilities of each option after the prompt, from the IR's own logits."""
        from corpus.generate.openvino_scoring import OptionScorer

        if self._scorer is None:
            self._scorer = OptionScorer(self.ir_dir, self._properties)
        encoded = [self._tokenizer(option, add_special_tokens=False)["input_ids"] for option in options]
        return self._scorer.score(self._prompt_ids(messages), encoded)
