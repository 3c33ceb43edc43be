"""The peer side of bench/full_scale.py: PyHealth 2.1 on the same synthetic tables.

PyHealth runs in its own venv (bench/pyhealth_peer/setup_venv.sh builds it on
first use), from a fresh cache folder each time (a cold run: its event table and
task samples are cached there), with a time cap: a run stopped at the cap is
reported as "capped at X s", never as a time.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

from fullscale_measure import run_measured

HERE = Path(__file__).resolve().parent
PEER = HERE / "pyhealth_peer"


def ensure_venv(venv: Path) -> Path:
    python = venv / "bin" / "python"
    subprocess.run(["bash", str(PEER / "setup_venv.sh"), str(venv)], check=True)
    return python


def run_peer(source: Path, cache: Path, venv: Path, cap_s: float, log_dir: Path, label: str,
             workers: int = 1, mem_cap_gb: float | None = None) -> dict:
    python = ensure_venv(venv)
    shutil.rmtree(cache, ignore_errors=True)
    cache.mkdir(parents=True)
    measured = run_measured([str(python), str(PEER / "run_tasks.py"), str(source.resolve()), str(cache),
                             "--workers", str(workers)], cwd=HERE, cap_s=cap_s,
                            log_path=log_dir / f"{label}-pyhealth.log", mem_cap_gb=mem_cap_gb)
    # PyHealth logs its progress to stdout: kept, so that a capped run shows how far it got.
    (log_dir / f"{label}-pyhealth.stdout").write_text(measured.stdout)
    figures = measured.as_json()
    if figures["mem_capped"]:
        figures["status"] = f"stopped at {mem_cap_gb:g} GB after {measured.wall_s:.0f} s"
    elif measured.capped:
        figures["status"] = f"capped at {cap_s:.0f} s"
    elif measured.returncode != 0:
        figures["status"] = f"failed (rc {measured.returncode})"
        figures["error_tail"] = measured.stderr_tail[-1500:]
    else:
        figures["status"] = "done"
        figures.update(json.loads(measured.stdout.strip().splitlines()[-1]))
    shutil.rmtree(cache, ignore_errors=True)  # GBs at 100k patients; the figures are kept
    print(f"  {label} pyhealth: {figures['status']}, {measured.wall_s:.1f} s ({figures['cpu_s']:.1f} CPU s), "
          f"peak {measured.peak_gb:.2f} GB "
          f"(load {measured.load_before} -> {measured.load_after})", flush=True)
    return figures
