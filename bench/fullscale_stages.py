"""Our side of bench/full_scale.py: synthetic tables per size (cached), then the real
ingest, cohorts and questions stages, each in its own child process.

Each size gets a scratch work folder holding only a params.yaml (the repository's,
with mimic.source pointing at the synthetic tables, its other paths made
absolute, and no registry questions: the registry does not grow with MIMIC); the
stages are the repository's own `stages/<stage>.py`, run with that folder as the
current directory, so they write data/ and metrics/ there exactly as `dvc repro`
would.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import yaml

from fullscale_measure import Measured, run_measured

REPO = Path(__file__).resolve().parent.parent
STAGES = ("ingest", "cohorts", "questions")
# Tables cohorts reads (corpus/sql/visit_lists.sql): its "input rows".
COHORT_INPUTS = ("patients", "admissions", "diagnoses_icd", "procedures_icd", "prescriptions", "d_icd_diagnoses",
                 "d_icd_procedures")
# questions.tasks recipes. remedi: what params.yaml recommends for a full MIMIC-IV
# install (ReMedi's sets). all: every cohort sample becomes a question (the demo default).
RECIPES = {
    "remedi": {task: {"policy": "kare", "max_per_class": 5000, "total": 10000}
               for task in ("mortality", "readmission", "los")},
    "all": {task: {"policy": "natural", "max_per_class": None, "total": None}
            for task in ("mortality", "readmission", "los")},
}


def child_env() -> dict:
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}:{env.get('PATH', '')}"
    env.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TRANSFORMERS_OFFLINE="1", DVC_NO_ANALYTICS="1",
               GX_ANALYTICS_ENABLED="false", TOKENIZERS_PARALLELISM="false")
    return env


def _fresh(folder: Path, seconds: float = 300) -> bool:
    files = [p.stat().st_mtime for p in folder.rglob("*") if p.is_file()] if folder.is_dir() else []
    return bool(files) and time.time() - max(files) < seconds


def synth_tables(patients: int, seed: int, fmt: str, scratch: Path, log_dir: Path,
                 scale_to: str = "mimic-iv-2.2") -> tuple[Path, dict | None]:
    """scratch/synth/n<patients>-s<seed>-<fmt>[-<scale_to>]: made once (into a .partial folder, renamed
    when done). `scale_to`: corpus synth --scale-to (a target name or file; "none": the source's shape,
    and no suffix, so the folders made before --scale-to existed stay valid).

    Returns the folder and the generation's measurement (None when it was cached)."""
    # A name as it is (mimic-iv-2.2: Path.stem would cut ".2"); a target file by its file name's stem.
    label = Path(scale_to).stem if scale_to.endswith((".yaml", ".yml")) else Path(scale_to).name
    suffix = "" if scale_to == "none" else f"-{label}"
    out = scratch / "synth" / f"n{patients}-s{seed}-{fmt.replace('.', '')}{suffix}"
    partial = out.with_name(out.name + ".partial")
    # Another run (an earlier benchmark started apart, say) may be writing these tables:
    # corpus synth writes into a hidden .tmp folder, renamed when done. Wait for it.
    # (A .partial folder with fresh files is one that other run is about to rename; an old one
    # is left from a run that died, and is made again.)
    while not (out / "hosp").is_dir() and (list(out.parent.glob(f".{partial.name}*.tmp")) or _fresh(partial)):
        time.sleep(10)
    if (out / "hosp").is_dir():
        return out, None
    shutil.rmtree(partial, ignore_errors=True)
    partial.parent.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "corpus.cli", "synth", "--patients", str(patients), "--seed", str(seed),
               "--out", str(partial), "--format", fmt, "--scale-to", scale_to]
    measured = run_measured(command, cwd=REPO, env=child_env(), log_path=log_dir / f"synth-{out.name}.log")
    if measured.returncode != 0:
        raise SystemExit(f"corpus synth --patients {patients} failed (rc {measured.returncode}):\n"
                         f"{measured.stderr_tail}")
    partial.rename(out)
    figures = measured.as_json()
    (out / ".bench-synth.json").write_text(json.dumps(figures, indent=2, sort_keys=True))
    return out, figures


# The tables PyHealth's MIMIC-IV dataset reads for its three tasks, plus the two ICD
# dictionaries our cohorts need to name codes (required in the ingest spec).
PEER_TABLES = ("hosp/patients", "hosp/admissions", "hosp/diagnoses_icd", "hosp/procedures_icd",
               "hosp/prescriptions", "hosp/d_icd_diagnoses", "hosp/d_icd_procedures", "icu/icustays")


def peer_tables(source: Path) -> Path:
    """A sibling folder linking only PEER_TABLES of `source`: our stages on the same input
    PyHealth reads (no labevents: about 80% of the synthetic rows, read by our ingest only)."""
    out = source.with_name(source.name + "-peer-tables")
    for table in PEER_TABLES:
        for candidate in sorted(source.glob(f"{table}.*")):
            link = out / candidate.relative_to(source)
            link.parent.mkdir(parents=True, exist_ok=True)
            if not link.exists():
                link.symlink_to(candidate.resolve())
    return out


def _scratch_params(source: Path, recipe: str) -> dict:
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["mimic"]["source"] = str(source.resolve())
    params["mimic"]["table_spec"] = str(REPO / params["mimic"]["table_spec"])
    params["mimic"]["open_data"] = False
    params["questions"]["wording"] = str(REPO / params["questions"]["wording"])
    params["questions"]["tasks"] = RECIPES[recipe]
    params.pop("masked_value", None)  # no registry questions (see the module docstring)
    return params


def _rows(path: Path) -> int:
    return sum(pq.ParquetFile(f).metadata.num_rows for f in sorted(path.glob("*.parquet")))


def input_rows(workdir: Path, stage: str) -> int:
    """Rows the stage reads: ingest the source rows; cohorts the warehouse rows of the tables
    its SQL reads; questions the cohort files (visits and the three tasks' samples)."""
    if stage == "ingest":
        details = json.loads((workdir / "metrics/details/ingest.json").read_text())
        return sum(entry["rows_read"] for entry in details["tables"].values())
    if stage == "cohorts":
        warehouse = workdir / "data/warehouse/mimic"
        return sum(pq.ParquetFile(warehouse / f"{t}.parquet").metadata.num_rows for t in COHORT_INPUTS)
    return _rows(workdir / "data/cohorts")


def run_stages(source: Path, workdir: Path, recipe: str, log_dir: Path, label: str) -> dict[str, dict]:
    """Our three stages on `source`, in order, each measured in its own process."""
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)
    (workdir / "params.yaml").write_text(yaml.safe_dump(_scratch_params(source, recipe), sort_keys=False))
    results: dict[str, dict] = {}
    for stage in STAGES:
        measured: Measured = run_measured([sys.executable, str(REPO / "stages" / f"{stage}.py")], cwd=workdir,
                                          env=child_env(), log_path=log_dir / f"{label}-{stage}.log")
        if measured.returncode != 0:
            raise SystemExit(f"stage {stage} on {source} failed (rc {measured.returncode}):\n{measured.stderr_tail}")
        figures = measured.as_json()
        figures["input_rows"] = input_rows(workdir, stage)
        figures["rows_per_s"] = figures["input_rows"] / measured.wall_s
        results[stage] = figures
        print(f"  {label} {stage}: {measured.wall_s:.1f} s ({figures['cpu_s']:.1f} CPU s), "
              f"peak {measured.peak_gb:.2f} GB, "
              f"{figures['input_rows']:,} input rows (load {measured.load_before} -> {measured.load_after})",
              flush=True)
    questions = json.loads((workdir / "metrics/details/questions.json").read_text())
    cohorts = json.loads((workdir / "metrics/details/cohorts.json").read_text())
    results["outputs"] = {
        "cohort_samples": {task: entry["samples"] for task, entry in cohorts["tasks"].items()},
        "questions_by_split": questions.get("by_split"),
    }
    return results
