-- visit_lists.sql
-- Returns one row per admission of the warehouse, in admission order per
-- patient, with what was recorded during it named by MIMIC's own dictionaries:
--   subject_id, hadm_id, admittime, dischtime, hospital_expire_flag,
--   age (anchor_age shifted to the admission year),
--   admission_seq (0-based order among all of the patient's admissions),
--   next_hadm_id, next_admittime, next_hospital_expire_flag (NULL for the last),
--   conditions, procedures, medications (lists of distinct names, in record order).
-- Reads the views admissions, patients, diagnoses_icd, procedures_icd,
-- prescriptions, d_icd_diagnoses, d_icd_procedures.
WITH conditions AS (
    SELECT hadm_id, list(name ORDER BY first_seq, name) AS conditions
    FROM (
        SELECT dx.hadm_id,
               coalesce(dd.long_title, 'ICD-' || dx.icd_version || ' diagnosis ' || dx.icd_code) AS name,
               min(coalesce(dx.seq_num, 2147483647)) AS first_seq
        FROM diagnoses_icd dx
        LEFT JOIN d_icd_diagnoses dd USING (icd_code, icd_version)
        GROUP BY ALL
    )
    GROUP BY hadm_id
),
procedures AS (
    SELECT hadm_id, list(name ORDER BY first_seq, name) AS procedures
    FROM (
        SELECT px.hadm_id,
               coalesce(dp.long_title, 'ICD-' || px.icd_version || ' procedure ' || px.icd_code) AS name,
               min(coalesce(px.seq_num, 2147483647)) AS first_seq
        FROM procedures_icd px
        LEFT JOIN d_icd_procedures dp USING (icd_code, icd_version)
        GROUP BY ALL
    )
    GROUP BY hadm_id
),
medications AS (
    SELECT hadm_id, list(name ORDER BY first_start NULLS LAST, name) AS medications
    FROM (
        SELECT hadm_id, trim(drug) AS name, min(starttime) AS first_start
        FROM prescriptions
        WHERE trim(drug) <> ''
        GROUP BY ALL
    )
    GROUP BY hadm_id
),
ordered AS (
    SELECT a.subject_id, a.hadm_id, a.admittime, a.dischtime,
           coalesce(a.hospital_expire_flag, 0) AS hospital_expire_flag,
           p.anchor_age + (year(a.admittime) - p.anchor_year) AS age,
           row_number() OVER w - 1 AS admission_seq,
           lead(a.hadm_id) OVER w AS next_hadm_id,
           lead(a.admittime) OVER w AS next_admittime,
           lead(coalesce(a.hospital_expire_flag, 0)) OVER w AS next_hospital_expire_flag
    FROM admissions a
    JOIN patients p USING (subject_id)
    WINDOW w AS (PARTITION BY a.subject_id ORDER BY a.admittime, a.hadm_id)
)
SELECT o.*,
       coalesce(c.conditions, []::VARCHAR[]) AS conditions,
       coalesce(pr.procedures, []::VARCHAR[]) AS procedures,
       coalesce(m.medications, []::VARCHAR[]) AS medications
FROM ordered o
LEFT JOIN conditions c USING (hadm_id)
LEFT JOIN procedures pr USING (hadm_id)
LEFT JOIN medications m USING (hadm_id)
ORDER BY o.subject_id, o.admission_seq
