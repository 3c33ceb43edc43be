"""The fitted rates recorded in synth.json: what a reader needs to judge the synthetic tables."""

from __future__ import annotations

import numpy as np

from corpus.synth.generate import DAY_S, ChunkGenerator

# The readmission window the gap share is reported at (params.yaml cohorts.readmission_days' default).
READMISSION_DAYS = 15


def _r(value: float) -> float:
    """Six significant digits: the JSON stays small and its bytes stable."""
    return float(f"{value:.6g}")


def fitted_rates(gen: ChunkGenerator) -> dict:
    patients = len(gen.pat_k)
    admissions = len(gen.los)
    counts, shares = np.unique(gen.pat_k, return_counts=True)
    gaps = gen.gap[gen.fit.column("admissions", "seq") > 0]
    survivors = (gen.pat_k > 0) & ~gen.pat_died
    per_admission = {name[2:]: _r(values.mean()) for name, values in gen.n.items()}
    rows = {
        "patients": 1.0,
        "admissions": gen.pat_k.sum() / patients,
        "diagnoses_icd": gen.n["n_dx"].sum() / patients,
        "procedures_icd": gen.n["n_px"].sum() / patients,
        "prescriptions": gen.n["n_rx"].sum() / patients,
        "labevents": (gen.n["n_lab"].sum() + gen.pat_outlabs.sum()) / patients,
        "icustays": gen.n["n_icu"].sum() / patients,
    }
    return {
        "source_patients": patients,
        "source_admissions": admissions,
        "admissions_per_patient": {str(int(k)): _r(n / patients) for k, n in zip(counts, shares)},
        "rows_per_patient": {name: _r(value) for name, value in rows.items()},
        "rows_per_admission": per_admission,
        "outpatient_labs_per_patient": _r(gen.pat_outlabs.mean()),
        "los_days": {"mean": _r(gen.los.mean() / DAY_S), "median": _r(np.median(gen.los) / DAY_S)},
        "gap_days": {
            "median": _r(np.median(gaps) / DAY_S) if len(gaps) else None,
            f"share_under_{READMISSION_DAYS}": _r((gaps < READMISSION_DAYS * DAY_S).mean()) if len(gaps) else None,
        },
        "died_in_hospital": {
            "share_of_admissions": _r(gen.expire.mean()),
            "share_of_patients": _r(gen.pat_died.mean()),
        },
        "dod_share_of_survivors": _r((~np.isnan(gen.pat_dod) & survivors).sum() / max(int(survivors.sum()), 1)),
        "distinct_values": {
            "diagnosis_codes": gen.fit.diagnoses.values.num_rows,
            "procedure_codes": gen.fit.procedures.values.num_rows,
            "drugs": gen.fit.drugs.values.num_rows,
            "lab_items": gen.fit.labitems.num_rows,
            "care_units": gen.fit.careunits.values.num_rows,
        },
    }
