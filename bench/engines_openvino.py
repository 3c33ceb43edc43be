"""(c) of sampling_throughput.py: OpenVINO GenAI's `ContinuousBatchingPipeline`
on the benchmark's workload (the same prompt token ids, the same per-sample
seeds and sampling parameters as the project's engine).

One request per sample with its own seed (`rng_seed`, `num_return_sequences=1`),
prefix caching on, the requests added one per `step()` with the prompts in
token order (so a prompt that shares a prefix with the one before it finds that
prefix's KV blocks cached: `add_request` looks cached blocks up when a request
arrives, so adding every request at once recomputes every shared prefix).

Driven either through the project's backend (`--ov-driver generator`:
`corpus.generate.openvino_backend.OpenVINOGenerator`, what the sample stage
runs) or straight through the pipeline (`--ov-driver direct`: this file's
`run_direct`, the same feed written out here), for fp32 and int8 (weight-only)
IR exported by `corpus.models.openvino_export.export_openvino` into
`--ov-ir-root` (once; the export is not timed).

Precisions (`--ov-precision`, inference/KV cache): `f32/f32` is what the
backend runs by default (there a sample is the same drawn alone or in a batch;
corpus/generate/openvino_backend.py), `default` the CPU plugin's own: on a CPU
with AVX512-BF16 or AMX bf16 inference (activations and products in bf16, the
fp32 or int8 weights converted) with a u8 KV cache, on an AVX2-only CPU f32.
The precisions and threads that ran are recorded with each figure.
"""

from __future__ import annotations

import argparse
import os
import resource
import time
from pathlib import Path

DEFAULT_IR_ROOT = Path("/tmp/corpus-openvino-ir")


def add_arguments(parser) -> None:
    parser.add_argument("--ov-weights", default="fp32,int8",
                        help="(c) OpenVINO weight formats to run, comma-separated (fp32, int8; 'none' skips (c)); "
                             "WEIGHTS/PRECISION (int8/default) runs that one precision")
    parser.add_argument("--ov-precision", default="f32/f32,default",
                        help="(c) precisions to run, comma-separated, each INFERENCE/KV_CACHE (f32/f32: the "
                             "backend's default) or 'default' (the CPU plugin's own: bf16/u8 where the CPU has bf16)")
    parser.add_argument("--ov-driver", choices=["generator", "direct"], default="generator",
                        help="(c) through the project's OpenVINOGenerator, or the pipeline straight")
    parser.add_argument("--ov-ir-root", type=Path, default=DEFAULT_IR_ROOT,
                        help="(c) where the exported IR folders are kept (exported once, not timed)")
    parser.add_argument("--ov-max-batched-tokens", type=int, default=8192, help="(c) scheduler max_num_batched_tokens")
    parser.add_argument("--ov-cache-gb", type=int, default=0,
                        help="(c) scheduler cache_size in GB (0: the backend's default)")
    parser.add_argument("--worker-ov", help=argparse.SUPPRESS)  # "weights/precision" of one (c) worker


def runs(args) -> list[tuple[str, str]]:
    """(weight format, precision) pairs of (c), in the order they run."""
    if args.ov_weights.strip().lower() in ("", "none"):
        return []
    weights = [w.strip() for w in args.ov_weights.split(",") if w.strip()]
    precisions = [p.strip() for p in args.ov_precision.split(",") if p.strip()]
    # An entry "int8/default" runs that precision alone; a bare "int8" runs every --ov-precision.
    return [tuple(w.split("/", 1)) if "/" in w else (w, p) for w in weights for p in ([None] if "/" in w
                                                                                    else precisions)]


def isa_cap() -> str:
    """The ISA cap set through the environment ('' when none): a capped run is an
    emulation of an older CPU on this one, and is labelled so."""
    caps = [f"{name}={os.environ[name]}" for name in ("ONEDNN_MAX_CPU_ISA", "ATEN_CPU_CAPABILITY",
                                                      "CORPUS_NATIVE_ATTENTION") if os.environ.get(name)]
    return " ".join(caps)


def ensure_ir(model: Path, weight_format: str, root: Path) -> Path:
    """The IR folder of `model` in `weight_format`, exported on first use (keyed by the model's identity)."""
    from corpus.generate.backends import model_identity

    out = root / f"{model_identity(model)}-{weight_format}"
    if not (out / "openvino_model.xml").is_file():
        from corpus.models.openvino_export import export_openvino

        print(f"exporting {model} to OpenVINO IR ({weight_format}) in {out} (once, not timed) ...", flush=True)
        root.mkdir(parents=True, exist_ok=True)
        export_openvino(model, out, weight_format=weight_format)
    return out


def precisions(precision: str) -> tuple[str, str]:
    """(inference, KV cache) precisions of a `--ov-precision` entry, 'default' read from the CPU plugin."""
    if precision != "default":
        inference, _, kv = precision.partition("/")
        return inference, kv or inference
    import openvino as ov

    core = ov.Core()
    return tuple(core.get_property("CPU", name).to_string() for name in ("INFERENCE_PRECISION_HINT",
                                                                            "KV_CACHE_PRECISION"))


def _properties(args, precision: str) -> dict:
    inference, kv = precisions(precision)
    return {"INFERENCE_NUM_THREADS": args.threads or os.cpu_count(), "INFERENCE_PRECISION_HINT": inference,
            "KV_CACHE_PRECISION": kv}


def _count(ids: list[int], stops: frozenset[int], stopped: bool) -> int:
    """Generated tokens up to and including the first stop token, as the engine counts
    them (where the pipeline leaves the stop token out of its ids, it is added back)."""
    for position, token in enumerate(ids):
        if token in stops:
            return position + 1
    return len(ids) + (1 if stopped else 0)


def run_direct(args, prompts: list[list[int]], seeds: list[list[int]], stops: frozenset[int], ir: Path,
               precision: str) -> dict:
    """The pipeline driven here: one request per sample, one request added per step."""
    import numpy as np
    import openvino as ov
    import openvino_genai as genai

    scheduler = genai.SchedulerConfig()
    scheduler.enable_prefix_caching = True
    scheduler.max_num_batched_tokens = args.ov_max_batched_tokens
    if args.ov_cache_gb:
        scheduler.cache_size = args.ov_cache_gb
    pipe = genai.ContinuousBatchingPipeline(str(ir), scheduler, "CPU", _properties(args, precision))
    order = sorted(range(len(prompts)), key=lambda i: (prompts[i], i))
    queue = [(i, seed) for i in order for seed in seeds[i]]
    handles = []
    steps = 0
    started = time.perf_counter()
    for request_id, (index, seed) in enumerate(queue):
        config = genai.GenerationConfig()
        config.do_sample = True
        config.temperature = args.temperature
        config.top_p = args.top_p
        config.max_new_tokens = args.max_new_tokens
        config.num_return_sequences = 1
        config.rng_seed = seed
        config.stop_token_ids = set(stops)
        ids = ov.Tensor(np.asarray([prompts[index]], dtype=np.int64))  # the engine's own prompt ids
        handles.append(pipe.add_request(request_id, ids, config))
        pipe.step()
        steps += 1
    while pipe.has_non_finished_requests():
        pipe.step()
        steps += 1
    seconds = time.perf_counter() - started
    new_tokens, finish = 0, {}
    for handle in handles:
        output = handle.read_all()[0]
        reason = str(output.finish_reason).rsplit(".", 1)[-1].lower()
        stopped = reason == "stop"
        new_tokens += _count(list(output.generated_ids), stops, stopped)
        key = "eos" if stopped else reason
        finish[key] = finish.get(key, 0) + 1
    metrics = pipe.get_metrics()
    return {"new_tokens": new_tokens, "seconds": seconds, "steps": steps, "finish": finish,
            "max_cache_usage": getattr(metrics, "max_cache_usage", None)}


def run_generator(args, questions: list[dict], seeds: list[list[int]], ir: Path, weights: str,
                  precision: str) -> dict:
    """The project's backend, as the sample stage builds it (its own feed order and scheduler)."""
    from corpus.generate.backends import SampleRequest, SamplingConfig
    from corpus.generate.openvino_backend import OpenVINOGenerator
    from corpus.generate.prompts import question_messages, sampling_template

    template = sampling_template()
    sampling = SamplingConfig(args.temperature, args.top_p, args.max_new_tokens)
    inference, kv = precisions(precision)
    options = {"threads": args.threads or None, "max_num_batched_tokens": args.ov_max_batched_tokens,
               "inference_precision": inference, "kv_cache_precision": kv}
    if args.ov_cache_gb:
        options["cache_size_gb"] = args.ov_cache_gb
    generator = OpenVINOGenerator(args.model, sampling, template.hash, ir_dir=ir, weight_format=weights, **options)
    requests = [SampleRequest(f"{i}:{seed}", tuple(question_messages(q, template)), seed)
                for i, q in enumerate(questions) for seed in seeds[i]]
    new_tokens, finish = 0, {}
    started = time.perf_counter()
    for batch in generator.generate(requests, {r.key for r in requests}):
        for generation in batch.values():
            new_tokens += generation.new_tokens
            finish[generation.finish_reason] = finish.get(generation.finish_reason, 0) + 1
    seconds = time.perf_counter() - started
    return {"new_tokens": new_tokens, "seconds": seconds, "finish": finish, "fingerprint": generator.fingerprint}


def run_worker(args, questions: list[dict], prompts: list[list[int]], seeds: list[list[int]],
               stops: frozenset[int]) -> dict:
    """One (c) run in this process: args.worker_ov is 'weights/precision' (precision: 'default' or 'f32/f32')."""
    import openvino
    import openvino_genai

    weights, precision = args.worker_ov.split("/", 1)
    ir = ensure_ir(args.model, weights, args.ov_ir_root)
    if args.ov_driver == "direct":
        result = run_direct(args, prompts, seeds, stops, ir, precision)
    else:
        result = run_generator(args, questions, seeds, ir, weights, precision)
    inference, kv = precisions(precision)

    result.update({
        "method": "openvino genai ContinuousBatchingPipeline",
        "driver": args.ov_driver,
        "weights": weights,
        "precision": inference,
        "precision_asked": precision,
        "kv_cache_precision": kv,
        "threads": args.threads or os.cpu_count(),
        "max_num_batched_tokens": args.ov_max_batched_tokens,
        "openvino": openvino.__version__,
        "openvino_genai": openvino_genai.__version__,
        "isa_cap": isa_cap(),
        "questions": len(prompts),
        "prompt_tokens": sum(map(len, prompts)),
        "tokens_per_s": result["new_tokens"] / result["seconds"],
        "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2,  # as (a) and (b)
    })
    return result


def report(results: list[dict], engine_rate: float, loop_rate: float) -> None:
    for run in results:
        steps = f", {run['steps']} steps" if "steps" in run else ""
        print(f"(c) OpenVINO GenAI {run['openvino_genai'].split('-')[0]}, {run['weights']} weights, "
              f"{run['precision']} inference (KV cache {run['kv_cache_precision']}), {run['driver']}, whole set "
              f"({run['questions']} questions): {run['new_tokens']} new tokens in {run['seconds']:.1f} s = "
              f"{run['tokens_per_s']:.1f} tokens/s  (peak RSS {run['peak_rss_gb']:.2f} GB{steps}); "
              f"finish {run['finish']}")
    for run in results:
        print(f"ratio (c) {run['weights']} {run['precision']}/{run['kv_cache_precision']} / (b) engine: {run['tokens_per_s'] / engine_rate:.2f}x;"
              f" / (a) float32 loop: {run['tokens_per_s'] / loop_rate:.1f}x")
