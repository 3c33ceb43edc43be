"""Rationale-sampling throughput on this CPU: a plain `generate` loop, the
project's sampler (corpus.generate.hf_sampler) and OpenVINO GenAI, in the same run.

k samples (default 4) of up to 160 new tokens per real demo train question, with
the sample stage's own prompts (corpus/templates/prompts), SmolLM2-135M-Instruct:

(a) plain loop: one question at a time, `model.generate(..., do_sample=True,
    num_return_sequences=k)` (the prompt is copied k times and prefilled k
    times), once in float32 (what `from_pretrained` gives for this model folder)
    and once in the engine's dtype when that differs (so the engine's own share
    of the gain is visible);
(b) the engine: `sample_all` over the question set (each prompt prefilled once
    for its k samples, shared prompt prefixes prefilled once, batched decoding),
    first on the plain loop's questions alone, then on the whole set;
(c) OpenVINO GenAI's ContinuousBatchingPipeline on the whole set, fp32 and int8
    weights (bench/engines_openvino.py: one request per sample with its seed,
    prefix caching, requests added one per step in prompt order).

The question set is whole patients, as the stage meets them: patients (MIMIC
subjects and registry stays) in the order of a seeded hash, all their train
questions, until `--questions` are reached (each source, MIMIC and the
registry, to its share of the split's questions). A stage run over the train split
sees every question about a patient, and those share most of their prompt (the
same record under three tasks; a history that extends an earlier admission's),
which the engine exploits; the report prints how much of the set's prompt
tokens, and of the whole train split's, are such shared prefixes.
`--select first` takes the first N questions by id instead (few shared
prefixes: a lower bound for the engine).

The plain loop is slow, so it runs `--baseline-questions` of the set (default
4): the questions at the middle of each quarter of the set's prompt lengths, so
that its rate reflects the set's lengths. Tokens/s are rates, so the ratio
compares the loop's rate with the engine's on the whole set; the engine's rate
on the loop's questions alone is printed too.

Each method runs in its own child process, so each peak RSS is its own.
Generated tokens/s = generated tokens (up to and including the stop token) /
wall seconds of the sampling itself (model loading excluded).

    .venv/bin/python bench/sampling_throughput.py                 # ~7 min
    .venv/bin/python bench/sampling_throughput.py --questions 8 --baseline-questions 2 --max-new-tokens 32  # quick
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import engines_openvino  # noqa: E402  (bench/: this script's folder)
from cpu import cpu_info, cpu_report  # noqa: E402
from sampling_workload import (  # noqa: E402
    baseline_subset, ensure_model, peak_rss_gb, prefix_tree_tokens, prompt_ids, seed_of, select_questions)

DEFAULT_MODEL = Path("/tmp/smollm2-base")
DEFAULT_QUESTIONS = REPO / "data" / "questions" / "train.parquet"



def _set_prompts(args, tokenizer) -> list[list[int]]:
    questions = select_questions(args.data, args.questions, args.select, args.seed)
    return [prompt_ids(tokenizer, q) for q in questions]


def engine_workload(args, tokenizer):
    """(prompts, jobs, sampling parameters) of the engine run: the set's prompts,
    each with its k seeds (`seed_of`). fixed_lengths.py reuses it."""
    from corpus.generate.hf_sampler import PromptJob, SamplingParams

    prompts = _set_prompts(args, tokenizer)
    jobs = [PromptJob(prompt, [seed_of(i, k) for k in range(args.k)]) for i, prompt in enumerate(prompts)]
    params = SamplingParams(temperature=args.temperature, top_p=args.top_p, max_new_tokens=args.max_new_tokens)
    return prompts, jobs, params


# --- workers (each runs in its own process) ---------------------------------------------


def run_baseline(args) -> dict:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from corpus.generate.hf_sampler import stop_token_ids

    if args.threads:
        torch.set_num_threads(args.threads)
    model = AutoModelForCausalLM.from_pretrained(str(args.model), dtype=getattr(torch, args.worker_dtype),
                                                 attn_implementation="sdpa")
    model.eval()
    tokenizer = AutoTokenizer.from_pretrained(str(args.model))
    stops = stop_token_ids(model, tokenizer)
    prompts = _set_prompts(args, tokenizer)
    subset = baseline_subset([len(p) for p in prompts], args.baseline_questions)

    new_tokens, per_question = 0, []
    started = time.perf_counter()
    for index in subset:
        prompt = prompts[index]
        torch.manual_seed(seed_of(index, 0))
        t0 = time.perf_counter()
        with torch.inference_mode():
            output = model.generate(
                torch.tensor([prompt]),
                attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
                do_sample=True,
                temperature=args.temperature,
                top_p=args.top_p,
                top_k=0,  # top-p only, like the engine (generate's default adds top_k=50)
                max_new_tokens=args.max_new_tokens,
                num_return_sequences=args.k,
                pad_token_id=tokenizer.pad_token_id,
            )
        count = 0
        for row in output[:, len(prompt) :].tolist():
            ends = [position for position, token in enumerate(row) if token in stops]
            count += ends[0] + 1 if ends else len(row)
        new_tokens += count
        per_question.append({"prompt_tokens": len(prompt), "new_tokens": count, "seconds": time.perf_counter() - t0})
    seconds = time.perf_counter() - started
    return {
        "method": "plain generate loop",
        "dtype": args.worker_dtype,
        "questions": len(subset),
        "prompt_tokens": sum(len(prompts[i]) for i in subset),
        "new_tokens": new_tokens,
        "seconds": seconds,
        "tokens_per_s": new_tokens / seconds,
        "per_question": per_question,
        "peak_rss_gb": peak_rss_gb(),
    }


def run_engine(args) -> dict:
    from corpus.generate.hf_sampler import (
        PromptJob,
        SamplerStats,
        load_model,
        plan_batches,
        resolve_dtype,
        sample_all,
    )

    model, tokenizer = load_model(args.model, dtype=args.dtype, threads=args.threads or None)
    prompts, jobs, params = engine_workload(args, tokenizer)
    subset = baseline_subset([len(p) for p in prompts], args.baseline_questions)

    def measure(selected: list[PromptJob]) -> dict:
        stats = SamplerStats()
        finish: dict[str, int] = {}
        started = time.perf_counter()
        for _, outputs in sample_all(
            model, tokenizer, selected, params, max_batch_tokens=args.max_batch_tokens, max_rows=args.max_rows,
            stats=stats,
        ):
            for samples in outputs:
                for sample in samples:
                    finish[sample.finish_reason] = finish.get(sample.finish_reason, 0) + 1
        seconds = time.perf_counter() - started
        return {
            "questions": len(selected),
            "batches": len(plan_batches(selected, args.max_batch_tokens, args.max_rows)),
            "prompt_tokens": stats.prompt_tokens,
            "prefill_computed_tokens": stats.prefill_computed_tokens,
            "new_tokens": stats.new_tokens,
            "seconds": seconds,
            "tokens_per_s": stats.new_tokens / seconds,
            "prefill_seconds": stats.prefill_seconds,
            "decode_seconds": stats.decode_seconds,
            "prefill_tokens_per_s": stats.prefill_computed_tokens / stats.prefill_seconds,
            "decode_tokens_per_s": stats.new_tokens / stats.decode_seconds,
            "decode_forwards": stats.decode_forwards,
            "finish": finish,
        }

    result = {"method": "engine", "dtype": resolve_dtype(args.dtype), "prompt_lengths": [len(p) for p in prompts]}
    result["same_questions"] = measure([jobs[i] for i in subset])
    result["all_questions"] = measure(jobs)
    result["peak_rss_gb"] = peak_rss_gb()
    return result


def run_openvino(args) -> dict:
    """(c): one OpenVINO run (args.worker_ov) over the whole set, on the engine's prompt ids and seeds."""
    from types import SimpleNamespace

    from transformers import AutoTokenizer, GenerationConfig

    from corpus.generate.hf_sampler import stop_token_ids

    tokenizer = AutoTokenizer.from_pretrained(str(args.model))
    stops = stop_token_ids(SimpleNamespace(generation_config=GenerationConfig.from_pretrained(str(args.model))),
                           tokenizer)
    questions = select_questions(args.data, args.questions, args.select, args.seed)
    prompts = [prompt_ids(tokenizer, q) for q in questions]
    seeds = [[seed_of(i, k) for k in range(args.k)] for i in range(len(prompts))]
    return engines_openvino.run_worker(args, questions, prompts, seeds, stops)


def split_statistics(args) -> dict:
    """Prompt tokens and prefix-tree tokens of the whole train split (how much a full stage run shares)."""
    import polars as pl
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(args.model))
    questions = pl.read_parquet(args.data, columns=["id", "context", "question", "options"]).to_dicts()
    prompts = [prompt_ids(tokenizer, q) for q in questions]
    return {"questions": len(prompts), "prompt_tokens": sum(map(len, prompts)),
            "prefix_tree_tokens": prefix_tree_tokens(prompts)}


# --- driver ----------------------------------------------------------------------------


def child(worker: str, dtype: str | None = None, ov: str | None = None) -> dict:
    command = [sys.executable, __file__, "--worker", worker, *sys.argv[1:]]
    if dtype:
        command += ["--worker-dtype", dtype]
    if ov:
        command += ["--worker-ov", ov]
    completed = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    if completed.returncode != 0:
        sys.stderr.write(completed.stderr)
        raise SystemExit(f"{worker} worker failed (exit {completed.returncode})")
    return json.loads(completed.stdout.strip().splitlines()[-1])


def report(args, baselines: list[dict], engine: dict, split: dict, openvino: list[dict]) -> None:
    import torch

    same, full = engine["same_questions"], engine["all_questions"]
    lengths = engine["prompt_lengths"]
    threads = args.threads or torch.get_num_threads()
    cpu = cpu_info()
    print(cpu_report(cpu))
    if engines_openvino.isa_cap():  # the CPU line is this CPU's; the run emulated an older one on it
        print(f"EMULATED older CPU: {engines_openvino.isa_cap()} (not a measurement of that CPU)")
    print(f"model {args.model}, engine dtype {engine['dtype']} ({threads} threads, {os.cpu_count()} CPUs), k={args.k}, "
          f"max_new_tokens={args.max_new_tokens}, temperature={args.temperature}, top_p={args.top_p}")
    data = args.data.relative_to(REPO) if args.data.is_relative_to(REPO) else args.data
    how = "whole patients in seeded-hash order" if args.select == "patients" else "the first by id"
    print(f"question set: {len(lengths)} questions of {data} ({how}); prompt tokens median "
          f"{statistics.median(lengths):.0f}, mean {statistics.mean(lengths):.0f}, max {max(lengths)}, total "
          f"{sum(lengths)}, of which {1 - full['prefill_computed_tokens'] / full['prompt_tokens']:.0%} are prefixes "
          f"shared within a batch")
    print(f"whole train split: {split['questions']} questions, prompt tokens mean "
          f"{split['prompt_tokens'] / split['questions']:.0f}, {1 - split['prefix_tree_tokens'] / split['prompt_tokens']:.0%}"
          f" of them shared prefixes (prefix tree {split['prefix_tree_tokens']} of {split['prompt_tokens']})")
    print()
    for base in baselines:
        print(f"(a) plain generate loop, {base['dtype']}, {base['questions']} questions "
              f"({base['prompt_tokens']} prompt tokens): {base['new_tokens']} new tokens in {base['seconds']:.1f} s = "
              f"{base['tokens_per_s']:.1f} tokens/s  (peak RSS {base['peak_rss_gb']:.2f} GB)")
    for name, run in (("the loop's questions", same), ("whole set", full)):
        print(f"(b) engine, {engine['dtype']}, {name} ({run['questions']} questions, {run['batches']} batch(es)): "
              f"{run['new_tokens']} new tokens in {run['seconds']:.1f} s = {run['tokens_per_s']:.1f} tokens/s")
        print(f"      prefill {run['prefill_seconds']:.1f} s ({run['prompt_tokens']} prompt tokens, "
              f"{run['prefill_computed_tokens']} computed, {run['prefill_tokens_per_s']:.0f} computed tokens/s); "
              f"decode {run['decode_seconds']:.1f} s ({run['decode_tokens_per_s']:.0f} tokens/s, "
              f"{run['decode_forwards']} steps); finish {run['finish']}")
    print(f"      engine peak RSS {engine['peak_rss_gb']:.2f} GB")
    engines_openvino.report(openvino, full["tokens_per_s"], baselines[0]["tokens_per_s"])
    print()
    rate = full["tokens_per_s"]
    for base in baselines:
        print(f"ratio (b) whole set / (a) {base['dtype']}: {rate / base['tokens_per_s']:.1f}x"
              f"   (on the loop's questions alone: {same['tokens_per_s'] / base['tokens_per_s']:.1f}x)")
    default = baselines[0]  # float32: the loop as `from_pretrained` gives it
    print(f"targets: >= 8x the plain loop ({default['dtype']}): "
          f"{'met' if rate >= 8 * default['tokens_per_s'] else 'NOT met'} ({rate / default['tokens_per_s']:.1f}x); "
          f">= 150 generated tokens/s: {'met' if rate >= 150 else 'NOT met'} ({rate:.1f})")
    load = os.getloadavg()
    print(f"load average at the end (other processes share these CPUs): {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    if args.json:
        figures = {"cpu": cpu, "isa_cap": engines_openvino.isa_cap(), "baselines": baselines, "engine": engine,
                   "openvino": openvino, "split": split}
        Path(args.json).write_text(json.dumps(figures, indent=2) + "\n")


def build_parser() -> argparse.ArgumentParser:
    """The benchmark's options and their defaults (fixed_lengths.py reads them too)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL, help="HF model folder (converted if absent)")
    parser.add_argument("--data", type=Path, default=DEFAULT_QUESTIONS, help="train questions parquet")
    parser.add_argument("--questions", type=int, default=48, help="engine: at least this many questions")
    parser.add_argument("--select", choices=["patients", "first"], default="patients",
                        help="whole patients in seeded-hash order, or the first questions by id")
    parser.add_argument("--seed", type=int, default=0, help="seed of the patient order")
    parser.add_argument("--baseline-questions", type=int, default=4, help="plain loop: this many of the set")
    parser.add_argument("--k", type=int, default=4, help="samples per question")
    parser.add_argument("--max-new-tokens", type=int, default=160)
    parser.add_argument("--temperature", type=float, default=0.7)
    parser.add_argument("--top-p", type=float, default=0.95)
    parser.add_argument("--dtype", default="auto", help="engine dtype: auto (bf16 where native), float32, bfloat16")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--max-batch-tokens", type=int, default=65_536)
    parser.add_argument("--max-rows", type=int, default=128)
    parser.add_argument("--json", help="also write the figures to this JSON file")
    engines_openvino.add_arguments(parser)
    parser.add_argument("--worker", choices=["baseline", "engine", "openvino", "split"], help=argparse.SUPPRESS)
    parser.add_argument("--worker-dtype", help=argparse.SUPPRESS)
    return parser


def main() -> None:
    args = build_parser().parse_args()

    if not args.data.is_file():
        raise SystemExit(
            f"{args.data} not found: build the question sets first (`make repro`, or `dvc repro` in the repo root)"
        )
    if args.worker:
        workers = {"baseline": run_baseline, "engine": run_engine, "openvino": run_openvino, "split": split_statistics}
        print(json.dumps(workers[args.worker](args)))
        return

    from corpus.generate.hf_sampler import resolve_dtype

    print(cpu_report(), flush=True)  # figures differ by CPU family: say which one this is first
    ensure_model(args.model)
    engine_dtype = resolve_dtype(args.dtype)
    print(f"load average at the start: {' '.join(f'{x:.2f}' for x in os.getloadavg())}", flush=True)
    baselines = []
    for dtype in dict.fromkeys(["float32", engine_dtype]):
        print(f"running (a) the plain generate loop in {dtype} on {args.baseline_questions} questions ...", flush=True)
        baselines.append(child("baseline", dtype))
    print(f"running (b) the engine in {engine_dtype} on those, then on the whole set ...", flush=True)
    engine = child("engine")
    openvino = []
    for weights, precision in engines_openvino.runs(args):
        print(f"running (c) OpenVINO GenAI, {weights} weights, {precision} precision, on the whole set ...", flush=True)
        openvino.append(child("openvino", ov=f"{weights}/{precision}"))
    split = child("split")
    print()
    report(args, baselines, engine, split, openvino)


if __name__ == "__main__":
    main()
