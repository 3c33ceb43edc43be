"""The peer's work, run with the PyHealth 2.1 venv's python (bench/full_scale.py starts it).

    /tmp/pyhealth-venv/bin/python bench/pyhealth_peer/run_tasks.py EHR_ROOT CACHE_DIR [--workers 2]

PyHealth's documented MIMIC-IV route, unchanged: MIMIC4Dataset over the EHR
tables the three tasks read (diagnoses_icd, procedures_icd, prescriptions; it
adds patients, admissions and icustays itself), then its MIMIC-IV mortality,
readmission and length-of-stay tasks.

The table config is PyHealth's own mimic4_ehr.yaml less the attribute columns
a source file lacks: `corpus synth` writes the columns our ingest spec reads,
and PyHealth's config also lists a few that none of the three tasks reads
(anchor_year_group, language, marital_status, prod_strength, dose_val_rx,
dose_unit_rx, last_careunit); PyHealth stops on a listed column that is absent.
Dropping them only lightens PyHealth's load. The dropped columns are reported. Prints one JSON line: seconds per phase
and samples per task. A fresh CACHE_DIR makes it a cold run (PyHealth caches
the event table and each task's samples there).
"""

from __future__ import annotations

import argparse
import gzip
import json
import sys
import time
from pathlib import Path

import yaml


def _header(path: Path) -> set[str]:
    for candidate in (path, path.with_suffix("") if path.suffix == ".gz" else Path(f"{path}.gz")):
        if candidate.exists():
            opener = gzip.open if candidate.suffix == ".gz" else open
            with opener(candidate, "rt") as handle:
                return {name.strip().strip('"') for name in handle.readline().rstrip("\n").split(",")}
    raise SystemExit(f"{path}: table file not found (PyHealth reads <table>.csv.gz or .csv)")


def fitted_config(ehr_root: Path, out: Path) -> tuple[Path, dict[str, list[str]]]:
    """PyHealth's mimic4_ehr.yaml with the attributes absent from `ehr_root`'s files removed."""
    import pyhealth.datasets

    own = Path(pyhealth.datasets.__file__).parent / "configs" / "mimic4_ehr.yaml"
    config = yaml.safe_load(own.read_text())
    dropped: dict[str, list[str]] = {}
    for name in ("patients", "admissions", "icustays", "diagnoses_icd", "procedures_icd", "prescriptions"):
        table = config["tables"][name]
        present = _header(ehr_root / table["file_path"])
        missing = [a for a in table["attributes"] if a not in present]
        if missing:
            dropped[name] = missing
            table["attributes"] = [a for a in table["attributes"] if a in present]
    path = out / "mimic4_ehr_fitted.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path, dropped


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("ehr_root")
    parser.add_argument("cache_dir")
    parser.add_argument("--workers", type=int, default=2, help="PyHealth num_workers (this machine has 2 cores)")
    args = parser.parse_args()

    start = time.perf_counter()
    from pyhealth.datasets import MIMIC4Dataset
    from pyhealth.tasks import LengthOfStayPredictionMIMIC4, MortalityPredictionMIMIC4, ReadmissionPredictionMIMIC4

    phases: dict[str, float] = {"import": time.perf_counter() - start}
    mark = time.perf_counter()
    config_path, dropped = fitted_config(Path(args.ehr_root), Path(args.cache_dir))
    dataset = MIMIC4Dataset(
        ehr_root=args.ehr_root,
        ehr_config_path=str(config_path),
        ehr_tables=["diagnoses_icd", "procedures_icd", "prescriptions"],
        cache_dir=args.cache_dir,
        num_workers=args.workers,
    )
    # The event table is built lazily; build it here so that its time is the load's.
    dataset.global_event_df
    patients = len(dataset.unique_patient_ids)
    phases["dataset_load"] = time.perf_counter() - mark
    samples: dict[str, int] = {}
    for name, task in (("mortality", MortalityPredictionMIMIC4()), ("readmission", ReadmissionPredictionMIMIC4()),
                       ("los", LengthOfStayPredictionMIMIC4())):
        mark = time.perf_counter()
        samples[name] = len(dataset.set_task(task, num_workers=args.workers))
        phases[f"task_{name}"] = time.perf_counter() - mark
        print(f"pyhealth {name}: {samples[name]} samples in {phases[f'task_{name}']:.1f} s", file=sys.stderr,
              flush=True)
    phases["total"] = time.perf_counter() - start
    print(json.dumps({"patients": patients, "samples": samples, "phases_s": phases,
                      "dropped_config_columns": dropped}, sort_keys=True))


if __name__ == "__main__":
    main()
