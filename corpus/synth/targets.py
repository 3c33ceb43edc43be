"""`corpus synth --scale-to`: rescale the fitted tables to a published set of row counts.

The fit copies the source's shape; a small source (the demo: 2.75 admissions and
1,077 lab events per patient) is far denser than a whole hospital's records
(MIMIC-IV v2.2: 1.44 admissions and 394 lab events per patient). A target file
(corpus/templates/synth_targets/<NAME>.yaml, or a user's own) gives the row
counts of a release; for N patients each is scaled by N / tables.patients.
mimic-iv-2.2's counts are the ones MIT-LCP/mimic-code's build check
(mimic-iv/buildmimic/postgres/validate.sql) expects of a loaded database
(its header names v2.1; other tools hard-code the same counts as v2.2's);
they are not re-counted here. (Kept out of the file itself: its sha256 is
recorded in synth.json, and the cached benchmark tables carry it.)

The model, kept to three knobs so each is checkable against its target:

- *Who is admitted.* Only a share of patients get their template's admissions
  (real MIMIC-IV holds many patients seen only in the ED or as outpatients):
  share = target admissions per patient / source admissions per patient,
  capped at 1. The others keep a patients row (age, gender, anchor year of
  their template) and outpatient labs. The admitted ones are still a uniform
  resample of the source's patients, with their whole timeline, so mortality,
  readmission and length-of-stay rates stay the source's. (The target's
  distinct admitted patients is recorded, not fitted: matching it as well would
  mean changing admissions per admitted patient, i.e. the copied timelines.)
- *Rows per admission* (diagnoses, procedures, prescriptions, ICU stays): each
  admission's count is thinned (binomial) or grown (Poisson extra rows) so the
  table's expected total is the target's. Where it is possible, an admission
  with rows keeps one for sure and only the rest are thinned: then an admission
  never loses its last diagnosis, procedure or drug, so the visits that qualify
  for a sample (all three lists non-empty) are exactly the template's, and the
  samples per admitted patient stay the source's. Where the target is below the
  source's share of non-empty admissions (ICU stays at MIMIC-IV's rate), plain
  binomial thinning is used and some admissions lose all of theirs.
- *Lab events.* The target gives only labevents' total, so inpatient and
  outpatient draws are thinned by one ratio (the source's inpatient/outpatient
  mix is kept) chosen to hit that total.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml

from corpus.errors import ConfigError

TARGETS_DIR = Path(__file__).resolve().parent.parent / "templates" / "synth_targets"
TABLES = ("patients", "admissions", "diagnoses_icd", "procedures_icd", "prescriptions", "labevents", "icustays")
# The per-admission counts of the fit (corpus/synth/generate.py) each target table scales.
PER_ADMISSION = {"diagnoses_icd": "n_dx", "procedures_icd": "n_px", "prescriptions": "n_rx", "icustays": "n_icu"}
OPTIONAL = ("admitted_patients",)
INFO = ("release", "source")


@dataclass(frozen=True)
class Thinning:
    """How one count is rescaled: `keep_one` rows kept for sure where there are any, the rest times `ratio`."""

    ratio: float
    keep_one: bool = False

    def apply(self, rng: np.random.Generator, counts: np.ndarray) -> np.ndarray:
        keep = (counts > 0).astype(np.int64) if self.keep_one else np.zeros_like(counts)
        rest = counts - keep
        if self.ratio <= 1:
            return keep + rng.binomial(rest, self.ratio)
        return keep + rest + rng.poisson(rest * (self.ratio - 1))


@dataclass(frozen=True)
class Scaling:
    """A resolved target and the knobs fitted to it (see the module docstring)."""

    name: str
    path: Path
    sha256: str
    target: dict               # the file's contents
    admitted_share: float
    counts: dict[str, Thinning]  # n_dx, n_px, n_rx, n_icu
    labs: Thinning               # inpatient and outpatient lab events

    def per_patient(self, table: str) -> float:
        return self.target["tables"][table] / self.target["tables"]["patients"]

    def record(self) -> dict:
        """What synth.json holds about the scaling."""
        return {
            "name": self.name,
            "file": str(self.path),
            "sha256": self.sha256,
            "target": self.target,
            "target_rows_per_patient": {t: float(f"{self.per_patient(t):.6g}") for t in TABLES},
            "admitted_share": float(f"{self.admitted_share:.6g}"),
            "ratios": {
                **{table: {"ratio": float(f"{self.counts[count].ratio:.6g}"), "keep_one": self.counts[count].keep_one}
                   for table, count in PER_ADMISSION.items()},
                "labevents": {"ratio": float(f"{self.labs.ratio:.6g}"), "keep_one": False},
            },
        }


def resolve_target(value: str) -> tuple[str, Path]:
    """A NAME (corpus/templates/synth_targets/NAME.yaml) or a FILE path -> (name, path)."""
    path = Path(value)
    if path.suffix in (".yaml", ".yml") or path.is_file() or "/" in value:
        if not path.is_file():
            raise ConfigError(f"--scale-to {value}: no such target file")
        return path.stem, path
    known = sorted(p.stem for p in TARGETS_DIR.glob("*.yaml"))
    if value not in known:
        raise ConfigError(f"--scale-to {value}: unknown target name; expected one of {', '.join(known)} "
                          f"(files in {TARGETS_DIR}) or the path of a .yaml target file")
    return value, TARGETS_DIR / f"{value}.yaml"


def load_target(path: Path) -> dict:
    """The target file's contents, checked: every table present, counts whole and non-negative."""
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({exc})") from None
    if not isinstance(data, dict) or not isinstance(data.get("tables"), dict):
        raise ConfigError(f"{path}: expected a mapping with a 'tables' mapping of row counts")
    unknown = sorted(set(data) - {"tables", *OPTIONAL, *INFO})
    if unknown:
        raise ConfigError(f"{path}: unknown key(s) {', '.join(unknown)}; expected tables, {', '.join(OPTIONAL + INFO)}")
    tables = data["tables"]
    missing = [t for t in TABLES if t not in tables]
    if missing:
        raise ConfigError(f"{path}: tables.{missing[0]} missing (every one of {', '.join(TABLES)} is required)")
    extra = sorted(set(tables) - set(TABLES))
    if extra:
        raise ConfigError(f"{path}: tables.{extra[0]}: not a table synth writes (expected {', '.join(TABLES)})")
    counts = {f"tables.{t}": tables[t] for t in TABLES}
    counts.update({k: data[k] for k in OPTIONAL if k in data})
    for key, count in counts.items():
        if isinstance(count, bool) or not isinstance(count, int) or count < 0:
            raise ConfigError(f"{path}: {key} = {count!r}: expected a whole number of rows, 0 or more")
    for table in ("patients", "admissions"):
        if tables[table] == 0:
            raise ConfigError(f"{path}: tables.{table} = 0: the other counts are scaled by it, so it must be above 0")
    return data


def fit_scaling(value: str, pat_k: np.ndarray, n: dict[str, np.ndarray], outpatient_labs: np.ndarray) -> Scaling:
    """Resolve `value` and fit the knobs to the source (its admissions per patient `pat_k`, per-admission
    counts `n`, outpatient labs per patient)."""
    name, path = resolve_target(value)
    target = load_target(path)
    tables = target["tables"]
    per_patient = {t: tables[t] / tables["patients"] for t in TABLES}
    source_admissions = pat_k.mean()
    share = min(1.0, per_patient["admissions"] / source_admissions)
    # Per admission of the synthetic tables (share x source admissions per patient, which is the target's
    # when the share is not capped): so each table hits its total even where admissions cannot.
    admissions = share * source_admissions
    counts = {}
    for table, count in PER_ADMISSION.items():
        counts[count] = _thinning(path, table, per_patient[table] / admissions, n[count])
    labs_per_patient = share * n["n_lab"].sum() / len(pat_k) + outpatient_labs.mean()
    if labs_per_patient == 0 and per_patient["labevents"] > 0:
        raise ConfigError(f"{path}: tables.labevents = {tables['labevents']}: the source has no lab events to scale")
    labs = Thinning(per_patient["labevents"] / labs_per_patient if labs_per_patient else 0.0)
    return Scaling(name, path, hashlib.sha256(path.read_bytes()).hexdigest(), target, share, counts, labs)


def _thinning(path: Path, table: str, wanted: float, counts: np.ndarray) -> Thinning:
    mean, nonempty = counts.mean(), (counts > 0).mean()
    if mean == 0:
        if wanted > 0:
            raise ConfigError(f"{path}: tables.{table}: the source has no {table} rows to scale to it")
        return Thinning(0.0)
    if mean > nonempty and wanted >= nonempty:
        return Thinning((wanted - nonempty) / (mean - nonempty), keep_one=True)
    return Thinning(wanted / mean)
