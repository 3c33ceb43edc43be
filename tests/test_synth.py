"""`corpus synth`: the synthetic tables pass the real ingest, keep the source's label rates, and are
deterministic for a seed.

The fit (reading the demo) is done once; each variant is then written from it.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import replace
from pathlib import Path

import duckdb
import numpy as np
import pyarrow.parquet as pq
import pytest
import yaml
from typer.testing import CliRunner

from corpus.cli import app
from corpus.cohorts import TASKS, build_cohorts
from corpus.config import CohortConfig
from corpus.errors import ConfigError, SourceError
from corpus.ingest.mimic import ingest_mimic
from corpus.synth import write_synthetic
from corpus.synth.fit import fit_source
from corpus.synth.targets import TARGETS_DIR
from tests.conftest import DEMO, TABLE_SPEC, requires_demo

pytestmark = requires_demo

# Label rates are checked on PATIENTS patients written without labevents (a thousand lab rows per
# patient would make ingest the slow part; no label reads them); every table, ids and bytes on SMALL.
PATIENTS = 2000
SMALL = 300
SEED = 11


@pytest.fixture(scope="module")
def demo_fit(duckdb_config):
    return fit_source(DEMO, TABLE_SPEC, duckdb_config)


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory, demo_fit) -> Path:
    out = tmp_path_factory.mktemp("synth") / "mimic"
    write_synthetic(demo_fit, SMALL, SEED, out, "parquet", show_progress=False)
    return out


@pytest.fixture(scope="module")
def labelled_warehouse(tmp_path_factory, demo_fit, duckdb_config) -> tuple[Path, Path]:
    """(source, warehouse) of PATIENTS patients, labevents left out."""
    root = tmp_path_factory.mktemp("synth-labelled")
    write_synthetic(replace(demo_fit, present=demo_fit.present - {"labevents"}), PATIENTS, SEED, root / "src",
                    "parquet", show_progress=False)
    return root / "src", _ingest(root / "src", root, duckdb_config)[0]


def _ingest(source: Path, root: Path, db) -> tuple[Path, dict]:
    details = ingest_mimic(source, TABLE_SPEC, root / "mimic", root / "report.json", db)
    return root / "mimic", details


@pytest.fixture(scope="module")
def synthetic_warehouse(tmp_path_factory, synthetic, duckdb_config):
    return _ingest(synthetic, tmp_path_factory.mktemp("synth-warehouse"), duckdb_config)


def _digests(folder: Path) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_ingest_reads_every_table_and_excludes_nothing(synthetic, synthetic_warehouse):
    _, details = synthetic_warehouse
    written = json.loads((synthetic / "synth.json").read_text())
    # Every table the spec lists, bar chartevents (the demo has none to fit), with every row kept.
    assert details["missing_optional_tables"] == ["chartevents"] == written["not_written"]
    assert details["rows_excluded_total"] == 0 and details["invalid_values_total"] == 0
    assert {name: t["rows_written"] for name, t in details["tables"].items()} == written["rows"]
    assert written["rows"]["patients"] == SMALL


def test_rows_per_patient_follow_the_source(labelled_warehouse):
    source, _ = labelled_warehouse
    written = json.loads((source / "synth.json").read_text())
    assert written["not_written"] == ["chartevents", "labevents"]
    # At the source's rates (2.75 admissions, 45 diagnoses, 181 prescriptions per patient), within 10 %
    # (for admissions about 4 standard errors of a mean over 2,000 resampled demo patients: sd 3.2).
    per_patient = written["fitted"]["rows_per_patient"]
    for table in ("admissions", "diagnoses_icd", "procedures_icd", "prescriptions", "icustays"):
        assert written["rows"][table] / PATIENTS == pytest.approx(per_patient[table], rel=0.10), table


def test_ids_and_times_are_consistent(synthetic_warehouse):
    warehouse, _ = synthetic_warehouse
    con = duckdb.connect()
    for table in ("patients", "admissions", "diagnoses_icd", "procedures_icd", "prescriptions", "labevents",
                  "icustays"):
        con.execute(f"CREATE VIEW {table} AS SELECT * FROM read_parquet('{warehouse / table}.parquet')")

    def count(sql: str) -> int:
        return con.execute(sql).fetchone()[0]

    assert count("SELECT count(*) - count(DISTINCT subject_id) FROM patients") == 0
    assert count("SELECT count(*) - count(DISTINCT hadm_id) FROM admissions") == 0
    assert count("SELECT count(*) - count(DISTINCT stay_id) FROM icustays") == 0
    # Every event names an admission of the same patient, at a time inside the stay.
    for table, time in (("diagnoses_icd", None), ("procedures_icd", "chartdate"), ("prescriptions", "starttime"),
                        ("labevents", "charttime"), ("icustays", "intime")):
        outside = f" OR e.{time} < CAST(a.admittime AS DATE) OR e.{time} > a.dischtime" if time == "chartdate" else (
            f" OR e.{time} < a.admittime OR e.{time} > a.dischtime" if time else "")
        bad = count(f"SELECT count(*) FROM {table} e LEFT JOIN admissions a USING (hadm_id) "
                    f"WHERE e.hadm_id IS NOT NULL AND (a.hadm_id IS NULL OR a.subject_id <> e.subject_id{outside})")
        assert bad == 0, table
    assert count("SELECT count(*) FROM labevents WHERE subject_id NOT IN (SELECT subject_id FROM patients)") == 0
    assert count("SELECT count(*) FROM labevents WHERE hadm_id IS NULL") > 0  # outpatient draws, as in MIMIC
    assert count("SELECT count(*) FROM icustays WHERE outtime < intime OR outtime > "
                 "(SELECT dischtime FROM admissions a WHERE a.hadm_id = icustays.hadm_id)") == 0
    # Admissions in order: each one after the previous discharge.
    assert count("SELECT count(*) FROM admissions WHERE dischtime <= admittime") == 0
    assert count("""SELECT count(*) FROM (SELECT admittime, lag(dischtime) OVER (PARTITION BY subject_id
                    ORDER BY admittime) AS previous FROM admissions) WHERE admittime <= previous""") == 0
    # Deaths: only in a patient's last admission, deathtime = dischtime, dod its date; a survivor's dod later.
    assert count("SELECT count(*) FROM admissions WHERE hospital_expire_flag = 1") > 0
    assert count("""SELECT count(*) FROM admissions a WHERE hospital_expire_flag = 1 AND (deathtime <> dischtime
                    OR EXISTS (SELECT 1 FROM admissions b WHERE b.subject_id = a.subject_id
                               AND b.admittime > a.admittime))""") == 0
    assert count("SELECT count(*) FROM admissions WHERE (deathtime IS NULL) <> (hospital_expire_flag = 0)") == 0
    assert count("""SELECT count(*) FROM patients p JOIN admissions a USING (subject_id)
                    WHERE a.hospital_expire_flag = 1 AND p.dod IS DISTINCT FROM CAST(a.deathtime AS DATE)""") == 0
    assert count("""SELECT count(*) FROM patients p JOIN admissions a USING (subject_id)
                    WHERE p.dod < CAST(a.dischtime AS DATE)""") == 0


def _per_patient(folder: Path, task: str, label: int) -> dict[int, tuple[int, int]]:
    """{subject_id: (samples, samples with `label`)} of a cohort task."""
    rows = pq.read_table(folder / f"{task}.parquet", columns=["subject_id", "label"]).to_pylist()
    out: dict[int, list[int]] = {}
    for row in rows:
        entry = out.setdefault(row["subject_id"], [0, 0])
        entry[0] += 1
        entry[1] += row["label"] == label
    return {k: (n, y) for k, (n, y) in out.items()}


def _assert_label_rates(summary: dict, source_folder: Path, source_patients: int, patients: int) -> None:
    """The tolerance: a synthetic patient is a resampled source patient (timeline and counts; only the codes
    are new), so a synthetic label share is a ratio estimate over `patients` patients drawn with replacement
    from the source's. Its standard error is sqrt(mean_i (y_i - r n_i)^2 / N) / mean_i n_i over the source's
    patients i (n_i samples, y_i of them with the label, r the source's share); the synthetic share must lie
    within 3 of those of the source's share (at N = 2000: about 0.02 for mortality)."""
    checked = 0
    for task in TASKS:
        labels = (0, 1, 2, 3) if task == "los" else (1,)
        for label in labels:
            source = _per_patient(source_folder, task, label)
            n = np.array([v[0] for v in source.values()] + [0] * (source_patients - len(source)), float)
            y = np.array([v[1] for v in source.values()] + [0] * (source_patients - len(source)), float)
            rate = y.sum() / n.sum()
            se = np.sqrt(np.mean((y - rate * n) ** 2) / patients) / n.mean()
            synthetic = summary["tasks"][task]["by_label"].get(str(label), 0) / summary["tasks"][task]["samples"]
            assert abs(synthetic - rate) <= 3 * se, f"{task} label {label}: {synthetic:.4f} vs source {rate:.4f} (3 SE {3 * se:.4f})"
            checked += 1
    assert checked == 6
    # Samples per patient follow the source's too (a visit qualifies as its template did).
    source_samples = sum(v[0] for v in _per_patient(source_folder, "los", 0).values())
    assert summary["tasks"]["los"]["samples"] / patients == pytest.approx(source_samples / source_patients, rel=0.15)


@pytest.mark.parametrize("convention", ["kare", "pyhealth"])
def test_label_rates_match_the_source(tmp_path, labelled_warehouse, demo_cohorts, demo_fit, duckdb_config,
                                      convention):
    _, warehouse = labelled_warehouse
    summary = build_cohorts(warehouse, tmp_path / "cohorts", tmp_path / "summary.json",
                            CohortConfig(label_convention=convention), duckdb_config)
    _assert_label_rates(summary, demo_cohorts[convention], demo_fit.patients.num_rows, PATIENTS)


def test_same_seed_same_bytes_other_seed_other_data(tmp_path, demo_fit, synthetic):
    write_synthetic(demo_fit, SMALL, SEED, tmp_path / "again", "parquet", show_progress=False)
    write_synthetic(demo_fit, SMALL, SEED + 1, tmp_path / "other", "parquet", show_progress=False)
    first, again, other = _digests(synthetic), _digests(tmp_path / "again"), _digests(tmp_path / "other")
    assert first == again
    differing = {name for name in first if first[name] != other[name]}
    # The dictionaries are the source's either way; every drawn table differs.
    assert differing == {"hosp/patients.parquet", "hosp/admissions.parquet", "hosp/diagnoses_icd.parquet",
                         "hosp/procedures_icd.parquet", "hosp/prescriptions.parquet", "hosp/labevents.parquet",
                         "icu/icustays.parquet", "synth.json"}


def test_csv_gz_holds_the_same_data_as_parquet(tmp_path, demo_fit, synthetic_warehouse, duckdb_config):
    write_synthetic(demo_fit, SMALL, SEED, tmp_path / "src", "csv.gz", show_progress=False)
    csv_warehouse, _ = _ingest(tmp_path / "src", tmp_path, duckdb_config)
    assert (tmp_path / "src" / "hosp" / "labevents.csv.gz").read_bytes()[:2] == b"\x1f\x8b"
    con = duckdb.connect()
    # The ICD dictionaries (200,000 rows, the source's own) are compared by count only: comparing them
    # row by row would be most of this test's time.
    for table in ("d_icd_diagnoses", "d_icd_procedures"):
        a, b = (f"read_parquet('{folder / table}.parquet')" for folder in (synthetic_warehouse[0], csv_warehouse))
        assert con.execute(f"SELECT count(*) FROM {a}").fetchone() == con.execute(f"SELECT count(*) FROM {b}").fetchone()
    for table in ("patients", "admissions", "diagnoses_icd", "procedures_icd", "prescriptions", "labevents",
                  "icustays", "d_labitems", "d_items"):
        a, b = (f"read_parquet('{folder / table}.parquet')" for folder in (synthetic_warehouse[0], csv_warehouse))
        assert con.execute(f"SELECT count(*) FROM {a}").fetchone() == con.execute(f"SELECT count(*) FROM {b}").fetchone()
        assert con.execute(f"SELECT count(*) FROM ((FROM {a} EXCEPT ALL FROM {b}) UNION ALL "
                           f"(FROM {b} EXCEPT ALL FROM {a}))").fetchone()[0] == 0, table


def _partial_demo(tmp_path: Path, leave_out: str) -> Path:
    """The demo's files linked into a copy that lacks `leave_out` (hosp/<table>.csv.gz)."""
    copy = tmp_path / "partial"
    for path in DEMO.rglob("*.csv.gz"):
        if path.relative_to(DEMO).as_posix() != leave_out:
            (copy / path.parent.relative_to(DEMO)).mkdir(parents=True, exist_ok=True)
            (copy / path.relative_to(DEMO)).symlink_to(path)
    return copy


def test_a_source_without_a_required_table_is_refused_by_name(tmp_path, duckdb_config):
    source = _partial_demo(tmp_path, "hosp/diagnoses_icd.csv.gz")
    with pytest.raises(SourceError, match=r"hosp/diagnoses_icd\{.*required table diagnoses_icd not found"):
        fit_source(source, TABLE_SPEC, duckdb_config)


def test_a_source_table_without_a_column_is_refused_by_name(tmp_path, duckdb_config):
    source = _partial_demo(tmp_path, "hosp/admissions.csv.gz")
    con = duckdb.connect()
    con.execute(f"COPY (SELECT * EXCLUDE (dischtime) FROM read_csv('{DEMO}/hosp/admissions.csv.gz')) "
                f"TO '{source}/hosp/admissions.csv.gz' (FORMAT csv, HEADER)")
    with pytest.raises(SourceError, match=r"admissions\.csv\.gz: table admissions lacks column\(s\) dischtime"):
        fit_source(source, TABLE_SPEC, duckdb_config)


def test_cli_writes_the_folder_and_names_a_bad_source(tmp_path):
    runner = CliRunner()
    out = tmp_path / "synthetic"
    done = runner.invoke(app, ["synth", "--patients", "50", "--seed", "3", "--out", str(out), "--format", "csv.gz",
                               "--like", str(DEMO), "--table-spec", str(TABLE_SPEC)])
    assert done.exit_code == 0, done.output
    written = json.loads((out / "synth.json").read_text())
    assert (written["patients"], written["seed"], written["format"]) == (50, 3, "csv.gz")
    assert (out / "hosp" / "admissions.csv.gz").is_file() and (out / "icu" / "icustays.csv.gz").is_file()
    assert "wrote" in done.output and "labevents" in done.output
    missing = runner.invoke(app, ["synth", "--patients", "5", "--out", str(tmp_path / "none"),
                                  "--like", str(tmp_path / "nowhere"), "--table-spec", str(TABLE_SPEC)])
    assert missing.exit_code == 1 and not (tmp_path / "none").exists()
    bad_format = runner.invoke(app, ["synth", "--patients", "5", "--out", str(tmp_path / "x"), "--format", "xlsx",
                                     "--like", str(DEMO), "--table-spec", str(TABLE_SPEC)])
    assert bad_format.exit_code == 1 and not (tmp_path / "x").exists()
    no_patients = runner.invoke(app, ["synth", "--patients", "0", "--out", str(tmp_path / "y"),
                                      "--like", str(DEMO), "--table-spec", str(TABLE_SPEC)])
    assert no_patients.exit_code == 1 and not (tmp_path / "y").exists()
    # A folder that is not an earlier synth output is never replaced; an earlier output is.
    (tmp_path / "keep").mkdir()
    (tmp_path / "keep" / "notes.txt").write_text("mine")
    refused = runner.invoke(app, ["synth", "--patients", "5", "--out", str(tmp_path / "keep"),
                                  "--like", str(DEMO), "--table-spec", str(TABLE_SPEC)])
    assert refused.exit_code == 1 and (tmp_path / "keep" / "notes.txt").read_text() == "mine"
    again = runner.invoke(app, ["synth", "--patients", "7", "--seed", "3", "--out", str(out), "--format", "parquet",
                                "--like", str(DEMO), "--table-spec", str(TABLE_SPEC)])
    assert again.exit_code == 0, again.output
    assert json.loads((out / "synth.json").read_text())["patients"] == 7
    assert not (out / "hosp" / "admissions.csv.gz").exists() and (out / "hosp" / "admissions.parquet").is_file()


# --- --scale-to: the real MIMIC-IV's sizes ------------------------------------------------------------
# SCALED patients at mimic-iv-2.2's sizes: about 52 % of them admitted (so about as many admitted patients as
# PATIENTS above) and 394 lab events per patient (1.6 M rows, a few seconds to write and ingest).
SCALED = 4000
TARGET = "mimic-iv-2.2"


@pytest.fixture(scope="module")
def scaled(tmp_path_factory, demo_fit, duckdb_config) -> tuple[Path, Path, dict]:
    """(source, warehouse, ingest details) of SCALED patients scaled to TARGET."""
    root = tmp_path_factory.mktemp("synth-scaled")
    write_synthetic(demo_fit, SCALED, SEED, root / "src", "parquet", show_progress=False, scale_to=TARGET)
    warehouse, details = _ingest(root / "src", root, duckdb_config)
    return root / "src", warehouse, details


def test_scaled_tables_have_the_targets_rows_per_patient(scaled):
    source, warehouse, details = scaled
    written = json.loads((source / "synth.json").read_text())
    target_file = TARGETS_DIR / f"{TARGET}.yaml"
    recorded = written["scale_to"]
    assert (recorded["name"], recorded["sha256"]) == (TARGET, hashlib.sha256(target_file.read_bytes()).hexdigest())
    assert recorded["target"]["tables"]["admissions"] == 431_231
    # The real ingest reads every table and drops nothing.
    assert details["rows_excluded_total"] == 0 and details["invalid_values_total"] == 0
    assert {name: t["rows_written"] for name, t in details["tables"].items()} == written["rows"]
    con = duckdb.connect()
    con.execute(f"CREATE VIEW patients AS FROM read_parquet('{warehouse / 'patients'}.parquet')")
    wanted = recorded["target_rows_per_patient"]
    for table in ("admissions", "diagnoses_icd", "procedures_icd", "prescriptions", "labevents", "icustays"):
        # Rows per patient, patients with none counted as 0: its mean and standard error over SCALED patients.
        counts = np.array([row[0] for row in con.execute(
            f"SELECT count(t.subject_id) FROM patients p LEFT JOIN read_parquet('{warehouse / table}.parquet') t "
            "USING (subject_id) GROUP BY p.subject_id").fetchall()], float)
        assert len(counts) == SCALED
        se = counts.std() / np.sqrt(SCALED)
        # Within 3 standard errors of the target; the test can fail: 3 SE is under 15 % of the target.
        assert 3 * se < 0.15 * wanted[table], table
        assert abs(counts.mean() - wanted[table]) <= 3 * se, f"{table}: {counts.mean():.3f} vs {wanted[table]}"
    # The demo-shaped tables would be 1.9x (admissions) to 3.6x (prescriptions) these: the scaling did act.
    assert written["rows"]["prescriptions"] / SCALED < 0.5 * written["fitted"]["rows_per_patient"]["prescriptions"]


@pytest.mark.parametrize("convention", ["kare", "pyhealth"])
def test_scaled_label_rates_stay_the_sources(tmp_path, scaled, demo_cohorts, demo_fit, duckdb_config, convention):
    """The admitted patients are a resample of the source's, and an admission keeps at least one diagnosis,
    procedure and drug where its template had one: label rates and samples per admitted patient are the
    source's, within 3 SE over the admitted patients."""
    source, warehouse, _ = scaled
    admitted = duckdb.connect().execute(
        f"SELECT count(DISTINCT subject_id) FROM read_parquet('{warehouse / 'admissions'}.parquet')").fetchone()[0]
    share = json.loads((source / "synth.json").read_text())["scale_to"]["admitted_share"]
    assert admitted / SCALED == pytest.approx(share, abs=3 * np.sqrt(share * (1 - share) / SCALED))
    summary = build_cohorts(warehouse, tmp_path / "cohorts", tmp_path / "summary.json",
                            CohortConfig(label_convention=convention), duckdb_config)
    _assert_label_rates(summary, demo_cohorts[convention], demo_fit.patients.num_rows, admitted)


def test_scaled_same_seed_same_bytes(tmp_path, demo_fit, synthetic):
    for name in ("a", "b"):
        write_synthetic(demo_fit, SMALL, SEED, tmp_path / name, "parquet", show_progress=False, scale_to=TARGET)
    first, again = _digests(tmp_path / "a"), _digests(tmp_path / "b")
    assert first == again
    # Scaling changes the drawn tables; "none" is the unscaled output, byte for byte.
    unscaled = _digests(synthetic)
    assert first["hosp/prescriptions.parquet"] != unscaled["hosp/prescriptions.parquet"]
    write_synthetic(demo_fit, SMALL, SEED, tmp_path / "none", "parquet", show_progress=False, scale_to="none")
    assert _digests(tmp_path / "none") == unscaled


def _target_file(tmp_path: Path, name: str, edit) -> Path:
    data = yaml.safe_load((TARGETS_DIR / f"{TARGET}.yaml").read_text())
    edit(data)
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_a_bad_target_is_refused_naming_the_file_and_key(tmp_path, demo_fit):
    missing = _target_file(tmp_path, "missing", lambda d: d["tables"].pop("labevents"))
    with pytest.raises(ConfigError, match=rf"{missing}: tables\.labevents missing"):
        write_synthetic(demo_fit, 10, SEED, tmp_path / "out", "parquet", show_progress=False, scale_to=str(missing))
    negative = _target_file(tmp_path, "negative", lambda d: d["tables"].update(icustays=-5))
    with pytest.raises(ConfigError, match=rf"{negative}: tables\.icustays = -5: expected a whole number"):
        write_synthetic(demo_fit, 10, SEED, tmp_path / "out", "parquet", show_progress=False, scale_to=str(negative))
    typo = _target_file(tmp_path, "typo", lambda d: d["tables"].update(prescription=5))
    with pytest.raises(ConfigError, match=rf"{typo}: tables\.prescription: not a table synth writes"):
        write_synthetic(demo_fit, 10, SEED, tmp_path / "out", "parquet", show_progress=False, scale_to=str(typo))
    with pytest.raises(ConfigError, match=r"--scale-to mimic-iv-9: unknown target name; expected one of mimic-iv-2\.2"):
        write_synthetic(demo_fit, 10, SEED, tmp_path / "out", "parquet", show_progress=False, scale_to="mimic-iv-9")
    assert not (tmp_path / "out").exists()
    # The CLI refuses it before reading the source, with the same message and nothing written.
    done = CliRunner().invoke(app, ["synth", "--patients", "5", "--out", str(tmp_path / "cli"), "--scale-to",
                                    str(negative), "--like", str(DEMO), "--table-spec", str(TABLE_SPEC)])
    said = " ".join(done.output.split())  # rich wraps the line
    assert done.exit_code == 1 and "tables.icustays = -5" in said and not (tmp_path / "cli").exists()
