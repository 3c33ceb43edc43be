-- synth_admissions.sql
-- Returns one row per valid source admission of a kept patient (the
-- generator's templates of admissions), in (subject_id, admittime, hadm_id) order:
-- seq (0-based order among the patient's admissions), expire
-- (hospital_expire_flag, NULL read as 0 as visit_lists.sql does), los_s
-- (seconds from admittime to dischtime), gap_s (seconds from the patient's
-- previous dischtime to this admittime, NULL for the first; negative where the
-- source's stays overlap), the categorical columns the
-- synthetic admission copies, and how many rows each event table holds for it:
-- n_dx, n_px, n_rx, n_lab, n_icu.
-- Reads the views patients, admissions, diagnoses_icd, procedures_icd,
-- prescriptions, labevents, icustays.
WITH valid AS (
    SELECT a.*
    FROM admissions a
    WHERE a.hadm_id IS NOT NULL AND a.admittime IS NOT NULL AND a.dischtime IS NOT NULL
      AND a.dischtime >= a.admittime
      AND a.subject_id IN (SELECT subject_id FROM patients WHERE anchor_age IS NOT NULL AND anchor_year IS NOT NULL
                         GROUP BY subject_id HAVING count(*) = 1)
    QUALIFY count(*) OVER (PARTITION BY a.hadm_id) = 1
),
dx AS (SELECT hadm_id, count(*) AS n FROM diagnoses_icd WHERE icd_code IS NOT NULL GROUP BY hadm_id),
px AS (SELECT hadm_id, count(*) AS n FROM procedures_icd WHERE icd_code IS NOT NULL GROUP BY hadm_id),
rx AS (SELECT hadm_id, count(*) AS n FROM prescriptions WHERE drug IS NOT NULL GROUP BY hadm_id),
lab AS (SELECT hadm_id, count(*) AS n FROM labevents WHERE hadm_id IS NOT NULL AND itemid IS NOT NULL GROUP BY hadm_id),
icu AS (SELECT hadm_id, count(*) AS n FROM icustays WHERE stay_id IS NOT NULL GROUP BY hadm_id)
SELECT v.subject_id, v.hadm_id,
       row_number() OVER (PARTITION BY v.subject_id ORDER BY v.admittime, v.hadm_id) - 1 AS seq,
       coalesce(v.hospital_expire_flag, 0) AS expire,
       CAST(epoch(v.dischtime) - epoch(v.admittime) AS BIGINT) AS los_s,
       CAST(epoch(v.admittime)
            - epoch(lag(v.dischtime) OVER (PARTITION BY v.subject_id ORDER BY v.admittime, v.hadm_id)) AS BIGINT) AS gap_s,
       v.admission_type, v.admission_location, v.discharge_location, v.insurance, v.race,
       coalesce(dx.n, 0) AS n_dx, coalesce(px.n, 0) AS n_px, coalesce(rx.n, 0) AS n_rx,
       coalesce(lab.n, 0) AS n_lab, coalesce(icu.n, 0) AS n_icu
FROM valid v
LEFT JOIN dx USING (hadm_id)
LEFT JOIN px USING (hadm_id)
LEFT JOIN rx USING (hadm_id)
LEFT JOIN lab USING (hadm_id)
LEFT JOIN icu USING (hadm_id)
ORDER BY v.subject_id, seq
