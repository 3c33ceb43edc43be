"""The visits' item lists on a small hand-made warehouse that holds every ordering edge case,
against a plain-Python reading of the rule (visit_items.sql header): each item once, by its
first seq_num / starttime (NULL last), then by name in byte order; codes named by the
dictionary (or 'ICD-<v> diagnosis <code>'), codes sharing a name being one item; blank
drugs dropped. The stage builds these lists from integer name ids and list_sort, so the
cases where ids and names could disagree (ties, NULLs, shared names, non-ASCII) are here."""

from __future__ import annotations

from datetime import datetime

import polars as pl
import pytest

from corpus.cohorts import build_cohorts
from corpus.config import CohortConfig, DuckDBConfig

T0 = datetime(2150, 1, 1)


def _t(hours: float | None) -> datetime | None:
    return None if hours is None else datetime.fromtimestamp(T0.timestamp() + hours * 3600)


PATIENTS = [(1, 60, 2150), (2, 40, 2150)]
ADMISSIONS = [  # subject, hadm, admit hour, discharge hour, died
    (1, 11, 0, 50, 0), (1, 12, 400, 500, 0), (1, 13, 900, 950, 1), (2, 21, 0, 30, 0), (2, 22, 200, 300, 0),
]
D_DIAGNOSES = [("A1", 10, "Sepsis"), ("A2", 10, "Sepsis"), ("B1", 10, "asthma"), ("C1", 9, "Épilepsie"),
               ("Z9", 10, "Zoster")]
DIAGNOSES = [  # hadm, seq, code, version
    (11, 2, "A1", 10), (11, 1, "A2", 10), (11, 1, "B1", 10), (11, None, "Z9", 10), (11, 3, "C1", 9),
    (11, 5, "Q7", 10),  # missing from the dictionary
    (12, None, "B1", 10), (12, None, "A1", 10), (12, 4, "C1", 9),
    (13, 1, "Z9", 10),
    (21, 1, "B1", 10), (22, 2, "A1", 10),
]
D_PROCEDURES = [("P1", 10, "Intubation"), ("P2", 10, "dialysis")]
PROCEDURES = [(11, 1, "P2", 10), (11, 1, "P1", 10), (12, 2, "P1", 10), (12, 2, "P1", 10), (13, 1, "P9", 9),
              (21, 1, "P1", 10), (22, 1, "P2", 10)]
PRESCRIPTIONS = [  # hadm, start hour, drug
    (11, 5, " Heparin"), (11, 1, "Heparin "), (11, 1, "Aspirin"), (11, 1, "aspirin"), (11, None, "Zinc"),
    (11, 3, "Éther"), (11, 3, "Zinc"), (11, 2, "   "),
    (12, None, "Insulin"), (12, None, "Heparin"), (12, 401, "Warfarin"),
    (13, 901, "Morphine"),
    (21, 1, "   "),  # only a blank drug: hadm 21 does not qualify
    (22, 201, "Heparin"),
]


def _write_warehouse(folder) -> None:
    folder.mkdir(parents=True)
    ts = pl.Datetime("us")
    frames = {
        "patients": pl.DataFrame(PATIENTS, schema={"subject_id": pl.Int64, "anchor_age": pl.Int64,
                                                   "anchor_year": pl.Int64}, orient="row"),
        "admissions": pl.DataFrame(
            [(s, h, _t(a), _t(d), f) for s, h, a, d, f in ADMISSIONS],
            schema={"subject_id": pl.Int64, "hadm_id": pl.Int64, "admittime": ts, "dischtime": ts,
                    "hospital_expire_flag": pl.Int64}, orient="row"),
        "d_icd_diagnoses": pl.DataFrame(D_DIAGNOSES, schema={"icd_code": pl.String, "icd_version": pl.Int32,
                                                             "long_title": pl.String}, orient="row"),
        "d_icd_procedures": pl.DataFrame(D_PROCEDURES, schema={"icd_code": pl.String, "icd_version": pl.Int32,
                                                               "long_title": pl.String}, orient="row"),
        "diagnoses_icd": pl.DataFrame(DIAGNOSES, schema={"hadm_id": pl.Int64, "seq_num": pl.Int32,
                                                         "icd_code": pl.String, "icd_version": pl.Int32}, orient="row"),
        "procedures_icd": pl.DataFrame(PROCEDURES, schema={"hadm_id": pl.Int64, "seq_num": pl.Int32,
                                                           "icd_code": pl.String, "icd_version": pl.Int32}, orient="row"),
        "prescriptions": pl.DataFrame([(h, _t(s), d) for h, s, d in PRESCRIPTIONS],
                                      schema={"hadm_id": pl.Int64, "starttime": ts, "drug": pl.String}, orient="row"),
    }
    for name, frame in frames.items():
        frame.write_parquet(folder / f"{name}.parquet")


def _ordered(items: list[tuple[object, str]]) -> list[str]:
    """Distinct names by (first key, NULL last), then name (Python's str order is UTF-8 byte order)."""
    first: dict[str, tuple[bool, object]] = {}
    for key, name in items:
        rank = (key is None, key if key is not None else 0)
        if name not in first or rank < first[name]:
            first[name] = rank
    return sorted(first, key=lambda n: (first[n], n))


def _reference() -> dict[int, dict[str, list[str]]]:
    d_dx = {(c, v): t for c, v, t in D_DIAGNOSES}
    d_px = {(c, v): t for c, v, t in D_PROCEDURES}
    out: dict[int, dict[str, list[str]]] = {}
    for _, hadm, *_ in ADMISSIONS:
        dx = [(s, d_dx.get((c, v), f"ICD-{v} diagnosis {c}")) for h, s, c, v in DIAGNOSES if h == hadm]
        px = [(s, d_px.get((c, v), f"ICD-{v} procedure {c}")) for h, s, c, v in PROCEDURES if h == hadm]
        rx = [(s, d.strip()) for h, s, d in PRESCRIPTIONS if h == hadm and d.strip()]
        if dx and px and rx:
            out[hadm] = {"conditions": _ordered(dx), "procedures": _ordered(px), "medications": _ordered(rx)}
    return out


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("lists")
    _write_warehouse(root / "warehouse")
    summary = build_cohorts(root / "warehouse", root / "cohorts", root / "summary.json", CohortConfig(),
                            DuckDBConfig(memory_limit="1GB", threads=2))
    return root / "cohorts", summary


def test_item_lists_follow_the_rule_on_every_edge_case(built):
    folder, _ = built
    visits = pl.read_parquet(folder / "visits.parquet")
    got = {r["hadm_id"]: {k: r[k] for k in ("conditions", "procedures", "medications")}
           for r in visits.iter_rows(named=True)}
    assert got == _reference()
    # the cases the reference covers are really in the data
    assert got[11]["medications"][:2] == ["Aspirin", "Heparin"]  # tie at hour 1: byte order, 'A' < 'H'
    assert got[11]["conditions"][0] == "Sepsis"  # A1 and A2 share the name: one item at min seq 1


def test_visit_index_counts_only_qualifying_visits(built):
    folder, summary = built
    visits = pl.read_parquet(folder / "visits.parquet")
    assert visits.select("subject_id", "hadm_id", "visit_index").rows() == [(1, 11, 0), (1, 12, 1), (1, 13, 2),
                                                                            (2, 22, 0)]
    assert visits.columns == ["subject_id", "hadm_id", "visit_index", "conditions", "procedures", "medications"]
    # hadm 21 is not a visit, but it is still subject 2's admission before 22: 22 has no next one
    mortality = pl.read_parquet(folder / "mortality.parquet")
    assert mortality.select("hadm_id", "label").rows() == [(11, 0), (12, 1)]
    assert summary["qualifying_visits"] == 4
    assert summary["tasks"]["los"]["patients"] == 2
