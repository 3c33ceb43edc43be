"""The fitted rates recorded in synth.json: what a reader needs to judge the synthetic tables."""

from __future__ import annotations

import numpy as np

from corpus.synth.generate import DAY_S, ChunkGenerator

# The readmission window and length-of-stay classes the rates are reported at (params.yaml
# cohorts defaults); the cohorts stage applies its own to the synthetic tables.
READMISSION_DAYS = 15
LOS_BINS = (0, 3, 7, 14)
TOP = 5


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
        "gap_days": {"median": _r(np.median(gaps) / DAY_S)} if len(gaps) else {},
        "died_in_hospital": {
            "share_of_admissions": _r(gen.expire.mean()),
            "share_of_patients": _r(gen.pat_died.mean()),
        },
        "dod_share_of_survivors": _r((~np.isnan(gen.pat_dod) & survivors).sum() / max(int(survivors.sum()), 1)),
        # Over every pair of consecutive source admissions (the cohorts then keep qualifying visits only).
        "labels_over_admission_pairs": _pair_labels(gen),
        "los_class_shares": {
            f"[{lo},{hi})" if hi else f"[{lo},inf)": _r(share)
            for lo, hi, share in zip(LOS_BINS, LOS_BINS[1:] + (None,), _los_shares(gen.los))
        },
        "most_frequent": {
            "diagnoses": _top(gen.fit.diagnoses, ("icd_code", "icd_version")),
            "drugs": _top(gen.fit.drugs, ("drug", "route")),
            "lab_items": _top(gen.lab_freq, ("itemid",)),
        },
        "distinct_values": {
            "diagnosis_codes": gen.fit.diagnoses.values.num_rows,
            "procedure_codes": gen.fit.procedures.values.num_rows,
            "drugs": gen.fit.drugs.values.num_rows,
            "lab_items": gen.fit.labitems.num_rows,
            "care_units": gen.fit.careunits.values.num_rows,
        },
    }


def _pair_labels(gen: ChunkGenerator) -> dict:
    seq = gen.fit.column("admissions", "seq")
    later = np.flatnonzero(seq > 0)
    if not len(later):
        return {}
    admit_to_admit_days = np.floor((gen.los[later - 1] + gen.gap[later]) / DAY_S)
    return {
        f"readmission_{READMISSION_DAYS}d_pyhealth": _r((gen.gap[later] < READMISSION_DAYS * DAY_S).mean()),
        f"readmission_{READMISSION_DAYS}d_kare": _r((admit_to_admit_days < READMISSION_DAYS).mean()),
        "mortality_next_admission": _r(gen.expire[later].mean()),
    }


def _los_shares(los_s: np.ndarray) -> np.ndarray:
    classes = np.searchsorted(np.array(LOS_BINS), np.floor(los_s / DAY_S), side="right") - 1
    return np.bincount(classes, minlength=len(LOS_BINS)) / len(los_s)


def _top(freq, columns: tuple[str, ...]) -> list[list]:
    """The TOP most frequent values with their share of rows."""
    counts = np.diff(freq.cumulative, prepend=0)
    order = np.argsort(-counts, kind="stable")[:TOP]
    rows = freq.values.select(list(columns)).take(order).to_pylist()
    return [[*row.values(), _r(counts[i] / freq.total)] for row, i in zip(rows, order)]
