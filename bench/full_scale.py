"""Full scale: ingest, cohorts and questions on synthetic MIMIC-IV of 10,000 to 300,000
patients, side by side with PyHealth 2.1 building its MIMIC-IV tasks from the same tables.

For each size: `corpus synth` writes the tables once (cached under --scratch;
its time is reported apart), then the project's own stage scripts run on them,
each in its own child process (wall time; peak RSS of the process tree; input
rows/s). At the --peer-sizes, PyHealth 2.1 (its own venv, built on first use by
bench/pyhealth_peer/setup_venv.sh) loads the same tables and builds its
mortality, readmission and length-of-stay samples, cold, capped at --peer-cap-s.
Nothing runs concurrently, so the memory peaks never add up.

    .venv/bin/python bench/full_scale.py                                    # 10k, 100k, 300k; peer at 10k, 100k
    .venv/bin/python bench/full_scale.py --sizes 10000 --peer-sizes 10000   # quick
    .venv/bin/python bench/full_scale.py --source ../shared/data/mimic-iv-demo --sizes 100   # no synth: the demo
    .venv/bin/python bench/full_scale.py --json bench/results/full_scale.json

Targets (issue 16, 2-core 24 GB machine): 300k ingest + cohorts + questions in
<= 5 min and <= 8 GB; >= 10x faster than PyHealth at each peer size; growth
close to linear (time ratio / size ratio near 1).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cpu import cpu_info, cpu_report  # noqa: E402
from fullscale_measure import loadavg  # noqa: E402
from fullscale_peer import run_peer  # noqa: E402
from fullscale_report import report_lines  # noqa: E402
from fullscale_stages import RECIPES, peer_tables, run_stages, synth_tables  # noqa: E402


def _sizes(text: str) -> list[int]:
    try:
        sizes = [int(part.replace("_", "")) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated patient counts, found {text!r}") from None
    if not sizes or min(sizes) <= 0:
        raise argparse.ArgumentTypeError(f"expected positive patient counts, found {text!r}")
    return sorted(set(sizes))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=_sizes, default=[10_000, 100_000, 300_000], help="patients per run")
    parser.add_argument("--peer-sizes", type=_sizes, default=[10_000, 100_000],
                        help="sizes PyHealth runs at too (a subset of --sizes)")
    parser.add_argument("--no-peer", action="store_true", help="skip PyHealth and our run on its tables")
    parser.add_argument("--only", choices=("ours", "pyhealth", "peer-tables"), default=None,
                        help="run only our stages (both runs at the peer sizes), only PyHealth, or only our "
                             "stages on PyHealth's tables (at every size); "
                             "--merge joins such runs' JSON files")
    parser.add_argument("--merge", type=Path, nargs="+", default=None,
                        help="no runs: join the sizes of these --json files (later files win per size and part), "
                             "print the table, write --json")
    parser.add_argument("--peer-cap-s", type=float, default=900.0, help="PyHealth's time cap per size, seconds")
    parser.add_argument("--peer-workers", type=int, default=1,
                        help="PyHealth num_workers (1: in-process; 2 spawns workers that re-import PyHealth "
                             "for every task: 104 s against 13 s on the demo)")
    parser.add_argument("--peer-mem-cap-gb", type=float, default=14.0,
                        help="stop PyHealth when its process tree passes this RSS (the machine is shared)")
    parser.add_argument("--pyhealth-venv", type=Path, default=Path("/tmp/pyhealth-venv"))
    parser.add_argument("--seed", type=int, default=7, help="corpus synth --seed")
    parser.add_argument("--scale-to", default="mimic-iv-2.2",
                        help="corpus synth --scale-to: the synthetic tables' sizes follow this target (a name in "
                             "corpus/templates/synth_targets/ or a file; none: the demo's shape, 1.9-3.6x the "
                             "real MIMIC-IV's rows per patient); part of the cache folder's name")
    parser.add_argument("--format", default="csv.gz", choices=("csv.gz", "parquet"),
                        help="synthetic table format; PyHealth reads csv.gz only, so the peer needs csv.gz")
    parser.add_argument("--recipe", default="remedi", choices=sorted(RECIPES),
                        help="questions.tasks: remedi (params.yaml's full-install recipe, 10,000 per task) "
                             "or all (every cohort sample, the demo default)")
    parser.add_argument("--source", type=Path, default=None,
                        help="an existing MIMIC-IV folder instead of synth (then --sizes is one label: its patients)")
    parser.add_argument("--scratch", type=Path, default=Path("/tmp/fullscale/bench"),
                        help="synthetic tables (kept between runs), work folders and logs")
    parser.add_argument("--json", type=Path, default=None, help="write every figure here")
    args = parser.parse_args()
    if args.merge:
        return _merge(args.merge, args.json)
    if args.source is not None and len(args.sizes) != 1:
        parser.error("--source takes exactly one --sizes value (the folder's patient count)")
    if not args.no_peer and args.format != "csv.gz":
        parser.error("the PyHealth peer reads csv.gz tables: use --format csv.gz or --no-peer")

    logs = args.scratch / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    print(cpu_report(), flush=True)
    started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    results: dict = {"started_utc": started, "cpu": cpu_info(), "loadavg_start": loadavg(),
                     "scale_to": None if args.source is not None else args.scale_to,
                     "args": {k: str(v) for k, v in vars(args).items()}, "sizes": {}}
    print(f"load average at the start: {results['loadavg_start']}", flush=True)
    for size in args.sizes:
        entry: dict = {}
        if args.source is not None:
            source, entry["synth"] = args.source, None
        else:
            source, entry["synth"] = synth_tables(size, args.seed, args.format, args.scratch, logs, args.scale_to)
            if entry["synth"] is None:
                cached = source / ".bench-synth.json"
                entry["synth"] = {**json.loads(cached.read_text()), "cached": True} if cached.exists() else None
        entry["source"] = str(source)
        entry["scale_to"] = None if args.source is not None else args.scale_to
        peer_size = not args.no_peer and size in args.peer_sizes
        if args.only not in ("pyhealth", "peer-tables"):
            entry["ours"] = run_stages(source, args.scratch / "work" / str(size), args.recipe, logs, f"n={size}")
        if (peer_size and args.only != "pyhealth") or args.only == "peer-tables":
            # The ratio compares the same input: our stages again on only the tables PyHealth reads.
            entry["ours_peer_tables"] = run_stages(peer_tables(source), args.scratch / "work" / f"{size}-peer-tables",
                                                   args.recipe, logs, f"n={size} (PyHealth's tables)")
        if peer_size and args.only not in ("ours", "peer-tables"):
            entry["pyhealth"] = run_peer(source, args.scratch / "pyhealth-cache" / str(size), args.pyhealth_venv,
                                         args.peer_cap_s, logs, f"n={size}", workers=args.peer_workers,
                                         mem_cap_gb=args.peer_mem_cap_gb)
        results["sizes"][str(size)] = entry
        if args.json:  # after every size: a long run that dies keeps what it measured
            _write(args.json, results)
    results["loadavg_end"] = loadavg()
    if args.only == "pyhealth":  # no table without our side: --merge it with the run that has it
        lines = [json.dumps({size: entry.get("pyhealth") for size, entry in results["sizes"].items()}, indent=1)]
    else:
        lines = _shape_line(results) + report_lines(results)
    results["table"] = lines
    print("\n".join(lines))
    if args.json:
        _write(args.json, results)


def _merge(paths: list[Path], out: Path | None) -> None:
    """One results dict from several runs (e.g. sizes run apart to fit a deadline)."""
    merged: dict = {}
    for path in paths:
        part = json.loads(path.read_text())
        for key, value in part.items():
            if key == "sizes":
                for size, entry in value.items():
                    merged.setdefault("sizes", {}).setdefault(size, {}).update(entry)
            elif key == "loadavg_start":
                merged.setdefault(key, value)
            else:
                merged[key] = value
    merged["merged_from"] = [str(p) for p in paths]
    merged["table"] = _shape_line(merged) + report_lines(merged)
    print("\n".join(merged["table"]))
    if out:
        _write(out, merged)


def _shape_line(results: dict) -> list[str]:
    """Which sizes the synthetic tables have: the figures mean little without it."""
    shape = results.get("scale_to")
    if shape is None:
        return ["tables: --source (not synthetic)" if "scale_to" in results else "tables: --scale-to not recorded"]
    return [f"synthetic tables: corpus synth --scale-to {shape}"
            + (" (the demo's shape)" if shape == "none" else " (row counts per patient of that target)")]


def _write(path: Path, results: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(results, indent=2, sort_keys=True) + "\n")
    tmp.replace(path)


if __name__ == "__main__":
    main()
