"""`corpus diff` at scale: two synthetic DPO versions of 1,000,000 pairs each, 10% of them changed.

Builds OLD and NEW dpo.jsonl files (TRL conversational records, as the pairs
stage writes them) in a scratch folder, then runs `corpus diff OLD NEW --json`
in a child process and prints its wall time and peak RSS, with the CPU line
(bench/cpu.py). The child is the whole command: reading both files, the
matching passes, lengths, examples and the JSON.

NEW differs from OLD by: 4% of pairs with a new chosen text, 4% a new rejected
text, 2% both (10% changed), 0.5% removed, 0.5% added (new questions). The
report must find exactly those counts; the benchmark checks it.

    .venv/bin/python bench/diff_scale.py                  # 1,000,000 pairs
    .venv/bin/python bench/diff_scale.py --pairs 100000   # quicker
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import polars as pl

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cpu import cpu_info, cpu_report  # noqa: E402

PAIRS_PER_QUESTION = 4
WORDS = ("the patient was admitted with sepsis and acute kidney injury lactate creatinine rising blood pressure low "
         "heart rate high given fluids antibiotics culture positive readmission mortality stay days therefore answer "
         "option likely because history shows prior admissions chronic heart failure diabetes").split()


# The diff as the child process's whole life, reporting its own peak RSS: VmHWM, the
# high-water mark of its own address space. (getrusage(RUSAGE_CHILDREN) would not do:
# Linux carries the parent's resident size across fork/vfork + exec into the child's
# ru_maxrss, and this parent holds the million-pair frames it built.)
CHILD = """
import atexit, sys
def _peak():
    line = next(l for l in open('/proc/self/status') if l.startswith('VmHWM'))
    print('peak_rss_kib=' + line.split()[1], file=sys.stderr)
atexit.register(_peak)
from corpus.cli import app
sys.argv = ['corpus', *sys.argv[1:]]
app()
"""


def _sentences(rng: np.random.Generator, count: int, words: int) -> list[str]:
    picks = rng.integers(0, len(WORDS), size=(count, words))
    return [" ".join(WORDS[i] for i in row) for row in picks]


def _messages(*parts: tuple[str, pl.Expr]) -> pl.Expr:
    return pl.concat_list([pl.struct(pl.lit(role).alias("role"), text.alias("content")) for role, text in parts])


def build(pairs: int, folder: Path, seed: int = 7) -> dict[str, int]:
    """Write folder/old/dpo.jsonl and folder/new/dpo.jsonl; return the planted change counts."""
    rng = np.random.default_rng(seed)
    pool = pl.Series("pool", _sentences(rng, 4096, 40))  # ~250 characters each
    questions = pairs // PAIRS_PER_QUESTION
    n = questions * PAIRS_PER_QUESTION
    base = pl.DataFrame({
        "row": np.arange(n), "q": np.arange(n) // PAIRS_PER_QUESTION,
        "c": rng.integers(0, len(pool), n), "r": rng.integers(0, len(pool), n),
        "p": rng.integers(0, len(pool), n),
    })
    # each row's fate in NEW: 0 kept, 1 chosen changed, 2 rejected changed, 3 both, 4 removed
    fate = rng.choice(5, size=n, p=[0.895, 0.04, 0.04, 0.02, 0.005])
    base = base.with_columns(pl.Series("fate", fate))
    added = int(round(n * 0.005))
    extra = pl.DataFrame({"row": np.arange(n, n + added), "q": questions + np.arange(added),
                          "c": rng.integers(0, len(pool), added), "r": rng.integers(0, len(pool), added),
                          "p": rng.integers(0, len(pool), added), "fate": np.full(added, 5)})

    def records(frame: pl.DataFrame, revised: bool) -> pl.DataFrame:
        chosen = pl.concat_str(pl.lit(pool.gather(frame["c"])), pl.lit(" Step "), pl.col("row").cast(pl.String),
                               pl.lit(" weighs the record. The answer is \\boxed{A}."))
        rejected = pl.concat_str(pl.lit(pool.gather(frame["r"])), pl.lit(" Step "), pl.col("row").cast(pl.String),
                                 pl.lit(" misreads it. The answer is \\boxed{B}."))
        if revised:  # NEW's revised texts: a changed closing sentence
            chosen = pl.when(pl.col("fate").is_in([1, 3])).then(chosen.str.replace("weighs", "re-weighs the"))\
                .otherwise(chosen)
            rejected = pl.when(pl.col("fate").is_in([2, 3])).then(rejected.str.replace("misreads", "misjudges"))\
                .otherwise(rejected)
        user = pl.concat_str(pl.lit("Question "), pl.col("q").cast(pl.String), pl.lit(": "),
                             pl.lit(pool.gather(frame["p"])), pl.lit(" Which option holds?"))
        out = frame.select(
            pl.format("q{}", "q").alias("question_id"),
            _messages(("system", pl.lit("You are a clinical reasoning assistant.")), ("user", user)).alias("prompt"),
            _messages(("assistant", chosen)).alias("chosen"),
            _messages(("assistant", rejected)).alias("rejected"),
        )
        # the id stands for the content hash the pairs stage writes
        content = pl.concat_str(pl.col("question_id"), pl.col("chosen").list.last().struct.field("content"),
                                pl.col("rejected").list.last().struct.field("content"))
        return out.select(content.hash().cast(pl.String).str.slice(0, 16).alias("id"), pl.all())

    (folder / "old").mkdir(parents=True, exist_ok=True)
    (folder / "new").mkdir(parents=True, exist_ok=True)
    records(base, revised=False).write_ndjson(folder / "old" / "dpo.jsonl")
    new = pl.concat([base.filter(pl.col("fate") != 4), extra])
    records(new, revised=True).write_ndjson(folder / "new" / "dpo.jsonl")
    counts = np.bincount(fate, minlength=5)
    return {"old": n, "new": n - int(counts[4]) + added, "chosen_changed": int(counts[1]),
            "rejected_changed": int(counts[2]), "both_changed": int(counts[3]), "removed": int(counts[4]),
            "added": added}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=1_000_000)
    parser.add_argument("--keep", type=Path, default=None, help="Build the files here and keep them.")
    args = parser.parse_args()
    print(cpu_report())
    with tempfile.TemporaryDirectory() as scratch:
        folder = args.keep or Path(scratch)
        start = time.perf_counter()
        planted = build(args.pairs, folder)
        sizes = {side: (folder / side / "dpo.jsonl").stat().st_size for side in ("old", "new")}
        print(f"built {planted['old']:,} + {planted['new']:,} pairs in {time.perf_counter() - start:.1f} s "
              f"({sizes['old'] / 1e6:.0f} MB + {sizes['new'] / 1e6:.0f} MB of JSON lines)")
        command = [sys.executable, "-c", CHILD, "diff", str(folder / "old"), str(folder / "new"), "--json",
                   "--max-ids", "100"]
        start = time.perf_counter()
        result = subprocess.run(command, capture_output=True, text=True)
        wall = time.perf_counter() - start
        if result.returncode != 0:
            print(result.stderr, file=sys.stderr)
            return 1
        peak_kib = int(re.search(r"peak_rss_kib=(\d+)", result.stderr).group(1))
    report = json.loads(result.stdout)
    found = {k: report["records"][k] for k in ("old", "new", "added", "removed")} | \
        {k: report["records"]["changed_by_kind"][k] for k in ("chosen_changed", "rejected_changed", "both_changed")}
    exact = all(found[k] == planted[k] for k in found)
    peak_gib = peak_kib / 1024**2
    print(f"corpus diff --json: wall {wall:.2f} s, peak RSS {peak_gib:.2f} GiB "
          f"(targets: 15 s, 4 GB on 2 cores); counts {'exact' if exact else 'WRONG'}: {found}")
    print(json.dumps({"pairs": planted["old"], "wall_s": round(wall, 2), "peak_rss_gib": round(peak_gib, 3),
                      "exact": exact, "cpu": cpu_info()}))
    return 0 if exact else 1


if __name__ == "__main__":
    raise SystemExit(main())
