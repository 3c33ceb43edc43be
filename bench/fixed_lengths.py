"""The engine's time on the sampling benchmark's question set with every sample's
length held fixed, so that two engine revisions (or two settings) are compared on
the same work.

Why: the plain benchmark (sampling_throughput.py) reports generated tokens/s, and a
batch's time is set mostly by its decode steps, which run until its longest sample
stops (160 tokens) whatever the others do. Any change of numerics moves where
samples stop: the same set gave 5,677 to 7,191 new tokens across engine
revisions, so tokens/s moved by up to 25 % while the seconds barely did.

    # 1. a normal run that records each sample's length (by its seed)
    .venv/bin/python bench/fixed_lengths.py --save-lengths /tmp/lengths.json
    # 2. any revision, on exactly those lengths (a stop token is forced at the recorded
    #    length and refused before it); --engine-repo takes the engine from another checkout
    git worktree add /tmp/old <rev>
    .venv/bin/python bench/fixed_lengths.py --lengths /tmp/lengths.json --engine-repo /tmp/old --repeat 3
    .venv/bin/python bench/fixed_lengths.py --lengths /tmp/lengths.json --repeat 3

The question set, prompts, seeds and sampling parameters are the benchmark's own.
Prints seconds (each run, then the fastest and the median: the machine is shared),
prefill and decode seconds, and peak RSS.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--save-lengths", type=Path, help="write each sample's length (by seed) here")
    parser.add_argument("--lengths", type=Path, help="force the sample lengths read from this file")
    parser.add_argument("--engine-repo", type=Path, default=REPO, help="checkout whose corpus.generate to time")
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--questions", type=int, default=48)
    parser.add_argument("--max-batch-tokens", type=int, default=65_536)
    parser.add_argument("--max-rows", type=int, default=128)
    args = parser.parse_args()

    sys.path.insert(0, str(args.engine_repo))
    sys.path.insert(1, str(REPO / "bench"))
    import sampling_throughput as bench  # the set, prompts and seeds (this checkout's)
    from cpu import cpu_report

    print(cpu_report(), flush=True)  # figures differ by CPU family: say which one this is

    from corpus.generate import hf_sampler

    # The benchmark's own workload: its defaults (set, k, sampling parameters) but for --questions.
    bench_args = bench.build_parser().parse_args(["--questions", str(args.questions)])
    model, tokenizer = hf_sampler.load_model(bench_args.model, dtype=bench_args.dtype)
    _, jobs, params = bench.engine_workload(bench_args, tokenizer)
    drawn_so_far: dict[int, int] = {}  # tokens drawn per sample (by seed), when forcing lengths
    if args.lengths:
        _force_lengths(hf_sampler, drawn_so_far, json.loads(args.lengths.read_text()), hf_sampler.stop_token_ids(model, tokenizer),
                       params.max_new_tokens)

    runs = []
    for _ in range(args.repeat):
        drawn_so_far.clear()
        stats = hf_sampler.SamplerStats()
        lengths: dict[int, int] = {}
        started = time.perf_counter()
        batches = hf_sampler.sample_all(model, tokenizer, jobs, params, max_batch_tokens=args.max_batch_tokens,
                                        max_rows=args.max_rows, stats=stats)
        for _, outputs in batches:
            lengths.update((s.seed, s.num_new_tokens) for samples in outputs for s in samples)
        seconds = time.perf_counter() - started
        runs.append(seconds)
        print(f"{stats.new_tokens} new tokens in {seconds:.1f} s (prefill {stats.prefill_seconds:.1f} s, decode "
              f"{stats.decode_seconds:.1f} s, {stats.decode_forwards} steps)", flush=True)
    print(f"engine {args.engine_repo}: fastest {min(runs):.1f} s, median {statistics.median(runs):.1f} s; "
          f"peak RSS {bench.peak_rss_gb():.2f} GB")
    if args.save_lengths:
        args.save_lengths.write_text(json.dumps({str(seed): length for seed, length in sorted(lengths.items())}))


def _force_lengths(hf_sampler, drawn_so_far: dict[int, int], lengths: dict[str, int], stops: frozenset[int],
                   max_new_tokens: int) -> None:
    """Make every row stop at its recorded length: its drawn token is kept, except that
    a stop token before that length becomes an ordinary one and, at that length, a
    stop token is drawn (a sample that ran to max_new_tokens is left to do so)."""
    draw = hf_sampler._draw_tokens
    stop, ordinary = min(stops), next(token for token in range(1000) if token not in stops)

    def forced(logits, generators, params):
        tokens = draw(logits, generators, params)
        for position, generator in enumerate(generators):
            seed = generator.initial_seed()
            drawn_so_far[seed] = count = drawn_so_far.get(seed, 0) + 1
            target = lengths[str(seed)]
            if count >= target and target < max_new_tokens:
                tokens[position] = stop
            elif tokens[position] in stops:
                tokens[position] = ordinary
        return tokens

    hf_sampler._draw_tokens = forced


if __name__ == "__main__":
    main()
