"""`corpus synth`: MIMIC-IV-shaped synthetic tables, fitted to a source (the demo by default).

The model of the data (what is copied, what is drawn independently):

- The *timeline* decides every label, so it is resampled whole: a synthetic
  patient copies a template patient drawn uniformly from the source, with its
  gender, anchor_age, anchor_year and, per admission in order: length of stay
  (seconds), the gap from the previous discharge (at least an hour: overlapping
  source stays are pulled apart), hospital_expire_flag (kept on the last
  admission only: a death ends the admissions; deathtime = dischtime, dod its
  date), admission type, locations, insurance, race, and how many diagnoses,
  procedures, prescriptions, lab events and ICU stays it has; plus its
  outpatient lab count (no hadm_id) and, for a survivor, its dod as days after
  the last discharge. The whole timeline is shifted by up to a year (uniform
  seconds), so copies of one template differ in their times but not in their
  stays or gaps. Hence admissions per patient, rows per admission and their
  joint distribution (including which visits have an empty list and so do not
  qualify for a sample), length of stay, readmission within N days (either
  rule) and in-hospital mortality follow the source: the label rates of N
  synthetic patients are a resample of the source's patients' rates, with the
  error of a ratio estimate over N patients (tests/test_synth.py uses that).
- The *content* is drawn independently of the patient, by the source's
  frequencies: ICD codes (code and version together), drugs (drug, drug_type,
  ndc and route together), lab items and ICU care units. A lab value is normal
  around its item's mean and sd (NULL with the item's share of non-numeric
  rows), its unit the item's most frequent one, its flag set with the item's
  abnormal share; event times fall uniformly inside the stay (outpatient labs
  inside the patient's span of admissions).
- Dictionaries (d_icd_diagnoses, d_icd_procedures, d_labitems, d_items) are
  the source's own.

`--scale-to NAME|FILE` then rescales the tables to a published set of row
counts (MIMIC-IV v2.2's by name): a share of patients admitted, rows per
admission thinned, the timelines still copied (corpus/synth/targets.py).

chartevents is not written (the demo has none). Everything is drawn from a
fixed-size chunk's own random stream (seed, chunk index): same seed and N,
same bytes.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from corpus.atomic import atomic_dir, write_json
from corpus.config import DuckDBConfig
from corpus.errors import ConfigError
from corpus.logs import console
from corpus.synth.fit import DICTIONARIES, EVENT_TABLES, SourceFit, fit_source
from corpus.synth.generate import CHUNK_PATIENTS, HADM_BASE, SUBJECT_BASE, ChunkGenerator, Offsets
from corpus.synth.summary import fitted_rates
from corpus.synth.targets import fit_scaling, load_target, resolve_target
from corpus.synth.write import FORMATS, TableWriter, empty_table



def synthesize(
    patients: int, seed: int, out: Path, fmt: str, like: Path, table_spec: Path, db: DuckDBConfig,
    show_progress: bool = True, scale_to: str | None = None,
) -> dict:
    """Fit to `like`, write `patients` synthetic patients under `out` (hosp/, icu/, synth.json); return synth.json.

    `scale_to`: a target NAME or FILE (corpus/synth/targets.py); None or "none" keeps the source's shape."""
    _check_request(patients, fmt)
    if scale_to is not None and scale_to != "none":
        # Resolve and check the target file before the (slower) fit reads the source.
        load_target(resolve_target(scale_to)[1])
    return write_synthetic(fit_source(Path(like), Path(table_spec), db), patients, seed, out, fmt, show_progress,
                           scale_to)


def _check_request(patients: int, fmt: str) -> None:
    if not 1 <= patients <= HADM_BASE - SUBJECT_BASE:
        # subject_ids count up from SUBJECT_BASE and must not reach the hadm_id range.
        raise ConfigError(f"--patients {patients}: expected 1 to {HADM_BASE - SUBJECT_BASE:,}")
    if fmt not in FORMATS:
        raise ConfigError(f"--format {fmt!r}: expected one of {', '.join(FORMATS)}")


def write_synthetic(fit: SourceFit, patients: int, seed: int, out: Path, fmt: str, show_progress: bool = True,
                    scale_to: str | None = None) -> dict:
    """Write `patients` synthetic patients drawn from `fit` under `out` (rescaled to the target `scale_to`
    unless None or "none"); return what synth.json holds."""
    _check_request(patients, fmt)
    out = Path(out)
    # --out is replaced whole: never a folder that holds something other than an earlier synth output.
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not (out / "synth.json").is_file())):
        raise ConfigError(f"--out {out}: exists and is not a corpus synth output (no synth.json); "
                          "refusing to replace it")
    generator = ChunkGenerator(fit)
    scaling = None
    if scale_to is not None and scale_to != "none":
        scaling = fit_scaling(scale_to, generator.pat_k, generator.n, generator.pat_outlabs)
        generator = ChunkGenerator(fit, scaling)
    outputs = [t for t in EVENT_TABLES if t in fit.present]
    chunks = -(-patients // CHUNK_PATIENTS)
    rates = fitted_rates(generator)
    expected = ({t: scaling.per_patient(t) for t in outputs} if scaling is not None
                else rates["rows_per_patient"])
    with atomic_dir(out) as staging:
        writers = {t: TableWriter(staging, fit.specs[t], fmt) for t in outputs}
        progress = Progress(TextColumn("{task.description:<16}"), BarColumn(), MofNCompleteColumn(),
                            TimeElapsedColumn(), console=console, disable=not show_progress)
        with progress:
            bars = {t: progress.add_task(t, total=round(patients * expected.get(t, 0)))
                    for t in outputs}

            def write(tables: dict) -> None:
                for name, parts in tables.items():
                    for part in parts:
                        writers[name].write(part)
                        progress.advance(bars[name], part.num_rows)

            # One chunk is written (Arrow and zstd release the GIL) while the next is
            # drawn: two cores busy, at most two chunks in memory.
            at = Offsets()
            with ThreadPoolExecutor(max_workers=1) as pool:
                pending = None
                for index in range(chunks):
                    size = min(CHUNK_PATIENTS, patients - index * CHUNK_PATIENTS)
                    tables, at = generator.chunk(seed, index, size, at)
                    if pending is not None:
                        pending.result()
                    pending = pool.submit(write, tables)
                    del tables
                if pending is not None:
                    pending.result()
            for name, writer in writers.items():
                writer.close(empty_table(fit.specs[name]))
                progress.update(bars[name], total=writer.rows, completed=writer.rows)
            for name in DICTIONARIES:
                if name in fit.dictionaries:
                    writer = TableWriter(staging, fit.specs[name], fmt)
                    writer.write(fit.dictionaries[name])
                    writer.close()
                    writers[name] = writer
        summary = {
            "seed": seed,
            "patients": patients,
            "format": fmt,
            "source": fit.source,
            "chunk_patients": CHUNK_PATIENTS,
            "fitted": rates,
            # The target, its file's sha256 and the knobs fitted to it (null: the source's shape).
            "scale_to": None if scaling is None else {
                **scaling.record(),
                # Not fitted (see corpus/synth/targets.py): set beside the target's admitted_patients.
                "admitted_patients_expected": round(
                    patients * scaling.admitted_share * float((generator.pat_k > 0).mean())),
            },
            "rows": {name: writer.rows for name, writer in sorted(writers.items())},
            "not_written": sorted(set(fit.specs) - set(writers)),
        }
        write_json(staging / "synth.json", summary)
    return summary
