"""Draw one chunk of synthetic patients, vectorised: Arrow tables per MIMIC-IV table.

A chunk is CHUNK_PATIENTS consecutive patients drawn with their own random
stream (seed, chunk index), so the output depends only on the seed and N, and
memory is bounded by one chunk (at the demo's rates about 5 M lab events).
Ids continue across chunks: subject_id, hadm_id and stay_id are consecutive
from fixed bases (MIMIC's own ranges), so they are unique and every table of
a chunk refers to the same ones.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from corpus.synth.fit import ADMISSION_CATEGORIES, Frequencies, SourceFit
from corpus.synth.targets import Scaling

CHUNK_PATIENTS = 5_000
SUBJECT_BASE = 10_000_000
HADM_BASE = 20_000_000
STAY_BASE = 30_000_000
# A readmission never starts before the previous discharge; overlapping
# source stays (negative gaps) become this gap.
MIN_GAP_S = 3_600
DAY_S = 86_400
# A patient without admissions has outpatient labs over MIMIC's anchor_year_group span (3 years).
ANCHOR_SPAN_S = 3 * 365 * DAY_S
# Each synthetic patient's timeline is shifted from its template's by up to a year,
# so copies of one template do not share their times (stays and gaps are kept).
SHIFT_S = 365 * DAY_S


@dataclass(frozen=True)
class Offsets:
    """Where a chunk's ids start."""

    patient: int = 0
    admission: int = 0
    stay: int = 0


def _ts(seconds: np.ndarray, mask: np.ndarray | None = None) -> pa.Array:
    return pa.array(seconds.astype("datetime64[s]"), pa.timestamp("s"), mask=mask)


def _date(seconds: np.ndarray, mask: np.ndarray | None = None) -> pa.Array:
    return pa.array((seconds // DAY_S).astype(np.int32), pa.int32(), mask=mask).cast(pa.date32())


def _within(rng: np.random.Generator, start: np.ndarray, span: np.ndarray) -> np.ndarray:
    """A second uniformly in [start, start + span] (float32 draws: a few seconds' grain over years, at half
    the cost; the cast truncates, which is the floor of a non-negative product)."""
    return start + (rng.random(len(start), dtype=np.float32) * (span + 1)).astype(np.int64)


def _groups(counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For rows repeated `counts` times: the owner of each row and its 0-based rank within the owner."""
    owner = np.repeat(np.arange(len(counts)), counts)
    starts = np.cumsum(counts) - counts
    return owner, np.arange(len(owner)) - starts[owner]


class ChunkGenerator:
    """Holds the fit in the arrays a chunk draws from."""

    def __init__(self, fit: SourceFit, scaling: Scaling | None = None) -> None:
        self.fit = fit
        # None: the source's shape. A scaling draws extra numbers, so only a scaled output's stream differs.
        self.scaling = scaling
        col = fit.column
        self.pat_age = col("patients", "anchor_age").astype(np.int32)
        self.pat_year = col("patients", "anchor_year").astype(np.int64)
        self.pat_offset = np.nan_to_num(col("patients", "first_offset_s").astype(np.float64)).astype(np.int64)
        self.pat_outlabs = col("patients", "outpatient_labs").astype(np.int64)
        self.pat_gender = fit.patients.column("gender").combine_chunks().dictionary_encode()
        self.pat_dod = col("patients", "dod_days").astype(np.float64)  # NaN: none
        # The template's admissions: synth_admissions.sql is ordered by subject_id and seq,
        # synth_patients.sql by subject_id, so a patient's admissions are one run of rows.
        patient_ids = col("patients", "subject_id")
        adm_subject = col("admissions", "subject_id")
        self.pat_first = np.searchsorted(adm_subject, patient_ids, side="left")
        self.pat_k = np.searchsorted(adm_subject, patient_ids, side="right") - self.pat_first
        self.expire = col("admissions", "expire").astype(bool)
        self.los = col("admissions", "los_s").astype(np.int64)
        gap = col("admissions", "gap_s").astype(np.float64)
        self.gap = np.maximum(np.nan_to_num(gap), MIN_GAP_S).astype(np.int64)
        self.gap[col("admissions", "seq") == 0] = 0
        # A death ends the admissions: only a last admission keeps its hospital_expire_flag
        # (a source flag on an earlier one would contradict the later admission).
        last = self.pat_first + self.pat_k - 1
        self.pat_died = (self.pat_k > 0) & self.expire[np.maximum(last, 0)]
        self.expire = np.zeros_like(self.expire)
        self.expire[last[self.pat_died]] = True
        self.n = {name: col("admissions", name).astype(np.int64) for name in ("n_dx", "n_px", "n_rx", "n_lab", "n_icu")}
        self.categories = {c: fit.admissions.column(c).combine_chunks().dictionary_encode() for c in ADMISSION_CATEGORIES}
        self.dx_version = fit.diagnoses.values.column("icd_version").to_numpy()
        self.px_version = fit.procedures.values.column("icd_version").to_numpy()
        self.encoded = {
            name: {c: freq.values.column(c).combine_chunks().dictionary_encode() for c in freq.values.column_names}
            for name, freq in (("dx", fit.diagnoses), ("px", fit.procedures), ("rx", fit.drugs), ("unit", fit.careunits))
        }
        lab = fit.labitems
        self.lab_freq = Frequencies(pa.table({"itemid": lab.column("itemid")}), np.cumsum(lab.column("n").to_numpy()))
        self.lab_item = lab.column("itemid").to_numpy().astype(np.int32)
        self.lab_uom = lab.column("valueuom").combine_chunks().dictionary_encode()
        self.lab_numeric = lab.column("numeric").to_numpy().astype(np.float32)
        self.lab_mean = lab.column("mean").to_numpy().astype(np.float64)
        self.lab_sd = lab.column("sd").to_numpy().astype(np.float64)
        self.lab_abnormal = lab.column("abnormal").to_numpy().astype(np.float32)
        self.lab_flag = lab.column("flag").combine_chunks().dictionary_encode()
        self.lab_flag_known = self.lab_flag.indices.is_valid().to_numpy(zero_copy_only=False)
        self.lab_flag_code = np.nan_to_num(self.lab_flag.indices.to_numpy(zero_copy_only=False)).astype(np.int32)

    def chunk(self, seed: int, index: int, patients: int, at: Offsets) -> tuple[dict[str, list[pa.Table]], Offsets]:
        """Tables of patients at.patient .. at.patient + patients - 1, and where the next chunk's ids start."""
        rng = np.random.default_rng(np.random.SeedSequence([seed, index]))
        tp = rng.integers(0, len(self.pat_k), patients)
        k = self.pat_k[tp]
        scale = self.scaling
        if scale is not None:
            # Only a share of patients keep their template's admissions (corpus/synth/targets.py).
            k = np.where(rng.random(patients) < scale.admitted_share, k, 0)
        subject = SUBJECT_BASE + at.patient + np.arange(patients, dtype=np.int64)

        adm_pat, seq = _groups(k)
        n_adm = len(adm_pat)
        ta = self.pat_first[tp][adm_pat] + seq
        los = self.los[ta]
        dying = self.expire[ta]
        # admit_i = admit_{i-1} + los_{i-1} + gap_i within a patient: a cumulative sum reset at each first admission.
        step = np.zeros(n_adm, np.int64)
        later = np.flatnonzero(seq > 0)
        step[later] = los[later - 1] + self.gap[ta[later]]
        climb = np.cumsum(step)
        first = np.flatnonzero(seq == 0)
        year_start = (self.pat_year[tp] - 1970).astype("datetime64[Y]").astype("datetime64[s]").astype(np.int64)
        base = year_start + self.pat_offset[tp] + rng.integers(0, SHIFT_S, patients)
        admit = base[adm_pat] + climb - np.repeat(climb[first], k[k > 0])
        disch = admit + los
        hadm = HADM_BASE + at.admission + np.arange(n_adm, dtype=np.int64)
        adm_subject = subject[adm_pat]

        last_disch = np.zeros(patients, np.int64)
        last_disch[k > 0] = disch[np.cumsum(k)[k > 0] - 1]
        death = self.pat_died[tp] & (k > 0)
        dod_days = self.pat_dod[tp]
        has_dod = ~death & ~np.isnan(dod_days) & (k > 0)
        dod_s = np.where(death, last_disch, last_disch + np.nan_to_num(dod_days).astype(np.int64) * DAY_S)

        tables: dict[str, list[pa.Table]] = {
            "patients": [pa.table({
                "subject_id": pa.array(subject),
                "gender": self.pat_gender.take(pa.array(tp)),
                "anchor_age": pa.array(self.pat_age[tp]),
                "anchor_year": pa.array(self.pat_year[tp].astype(np.int32)),
                "dod": _date(dod_s, mask=~(has_dod | death)),
            })],
            "admissions": [pa.table({
                "subject_id": pa.array(adm_subject),
                "hadm_id": pa.array(hadm),
                "admittime": _ts(admit),
                "dischtime": _ts(disch),
                "deathtime": _ts(disch, mask=~dying),
                **{c: self.categories[c].take(pa.array(ta)) for c in ADMISSION_CATEGORIES},
                "hospital_expire_flag": pa.array(dying.astype(np.int32)),
            })],
        }
        n = {name: counts[ta] for name, counts in self.n.items()}
        outlabs = self.pat_outlabs[tp]
        if scale is not None:
            n = {name: scale.counts[name].apply(rng, counts) if name in scale.counts else scale.labs.apply(rng, counts)
                 for name, counts in sorted(n.items())}
            outlabs = scale.labs.apply(rng, outlabs)
        tables["diagnoses_icd"] = [self._codes(rng, "dx", self.dx_version, n["n_dx"], adm_subject, hadm)]
        tables["procedures_icd"] = [self._codes(rng, "px", self.px_version, n["n_px"], adm_subject, hadm,
                                                admit, los)]
        tables["prescriptions"] = [self._prescriptions(rng, n["n_rx"], adm_subject, hadm, admit, los)]
        if "labevents" in self.fit.present and self.lab_freq.total:
            first_admit = np.where(k > 0, base, year_start)
            span = np.where(k > 0, last_disch - base, ANCHOR_SPAN_S)
            tables["labevents"] = [
                self._labs(rng, n["n_lab"], adm_subject, hadm, admit, los),
                self._labs(rng, outlabs, subject, None, first_admit, span),
            ]
        stays = 0
        if "icustays" in self.fit.present and self.fit.careunits.total:
            icu, stays = self._icustays(rng, n["n_icu"], adm_subject, hadm, admit, los, at.stay)
            tables["icustays"] = [icu]
        return tables, Offsets(at.patient + patients, at.admission + n_adm, at.stay + stays)

    def _codes(self, rng, kind, versions, counts, subject, hadm, admit=None, los=None) -> pa.Table:
        owner, rank = _groups(counts)
        pick = getattr(self.fit, {"dx": "diagnoses", "px": "procedures"}[kind]).draw(rng, len(owner))
        columns = {"subject_id": pa.array(subject[owner]), "hadm_id": pa.array(hadm[owner]),
                   "seq_num": pa.array((rank + 1).astype(np.int32))}
        if admit is not None:
            columns["chartdate"] = _date(_within(rng, admit[owner], los[owner]))
        columns["icd_code"] = self.encoded[kind]["icd_code"].take(pa.array(pick))
        columns["icd_version"] = pa.array(versions[pick].astype(np.int32))
        return pa.table(columns)

    def _prescriptions(self, rng, counts, subject, hadm, admit, los) -> pa.Table:
        owner, _ = _groups(counts)
        pick = pa.array(self.fit.drugs.draw(rng, len(owner)))
        start = _within(rng, admit[owner], los[owner])
        stop = _within(rng, start, admit[owner] + los[owner] - start)
        drugs = self.encoded["rx"]
        return pa.table({
            "subject_id": pa.array(subject[owner]), "hadm_id": pa.array(hadm[owner]),
            "starttime": _ts(start), "stoptime": _ts(stop),
            "drug_type": drugs["drug_type"].take(pick), "drug": drugs["drug"].take(pick),
            "ndc": drugs["ndc"].take(pick), "route": drugs["route"].take(pick),
        })

    def _labs(self, rng, counts, subject, hadm, start, span) -> pa.Table:
        owner, _ = _groups(counts)
        item = self.lab_freq.draw(rng, len(owner))
        value = np.round(self.lab_mean[item] + self.lab_sd[item] * rng.standard_normal(len(owner), dtype=np.float32), 2)
        no_value = rng.random(len(owner), dtype=np.float32) >= self.lab_numeric[item]
        abnormal = rng.random(len(owner), dtype=np.float32) < self.lab_abnormal[item]
        item_index = pa.array(item)
        # The item's own flag text where this row is abnormal, else NULL.
        flag = pa.DictionaryArray.from_arrays(
            pa.array(self.lab_flag_code[item], mask=~(abnormal & self.lab_flag_known[item])), self.lab_flag.dictionary)
        return pa.table({
            "subject_id": pa.array(subject[owner]),
            "hadm_id": pa.array(hadm[owner]) if hadm is not None else pa.nulls(len(owner), pa.int64()),
            "itemid": pa.array(self.lab_item[item]),
            "charttime": _ts(_within(rng, start[owner], span[owner])),
            "valuenum": pa.array(value, mask=no_value),
            "valueuom": self.lab_uom.take(item_index),
            "flag": flag,
        })

    def _icustays(self, rng, counts, subject, hadm, admit, los, first_stay) -> tuple[pa.Table, int]:
        owner, _ = _groups(counts)
        intime = _within(rng, admit[owner], los[owner] // 2)
        outtime = _within(rng, intime, admit[owner] + los[owner] - intime)
        unit = pa.array(self.fit.careunits.draw(rng, len(owner)))
        return pa.table({
            "subject_id": pa.array(subject[owner]), "hadm_id": pa.array(hadm[owner]),
            "stay_id": pa.array(STAY_BASE + first_stay + np.arange(len(owner), dtype=np.int64)),
            "first_careunit": self.encoded["unit"]["first_careunit"].take(unit),
            "intime": _ts(intime), "outtime": _ts(outtime),
            "los": pa.array((outtime - intime) / DAY_S),
        }), len(owner)
