-- baseline_mimic_features.sql
-- Returns the tabular baseline's inputs for each sample of the view `samples`
-- (subject_id, hadm_id, visit_index: rows of data/cohorts/<task>.parquet), one
-- row per sample, sorted by subject_id, hadm_id:
--   subject_id, hadm_id,
--   age     anchor_age shifted to the sample visit's admission year (as in
--           visit_lists.sql), NULL when the admission is not in `admissions`
--   gender  patients.gender ('F' | 'M')
--   codes   sorted distinct tokens recorded during the visits of the sample's
--           context: the patient's qualifying visits 0..visit_index (view
--           `visits` = data/cohorts/visits.parquet), the same visits the
--           question's context lists:
--             'dx:<icd_version>:<icd_code>'  diagnoses_icd
--             'px:<icd_version>:<icd_code>'  procedures_icd
--             'rx:<lower(trim(drug))>'       prescriptions (no code: MIMIC names drugs)
-- Codes, not the dictionary names the questions show: two ICD codes may share a
-- long title, and a code is what a tabular model on MIMIC is usually given.
-- Reads the views samples, visits, admissions, patients, diagnoses_icd,
-- procedures_icd, prescriptions.
WITH context AS (
    SELECT s.subject_id, s.hadm_id, v.hadm_id AS visit_hadm_id
    FROM samples s
    JOIN visits v ON v.subject_id = s.subject_id AND v.visit_index <= s.visit_index
),
tokens AS (
    SELECT hadm_id, 'dx:' || icd_version || ':' || trim(icd_code) AS token FROM diagnoses_icd
    UNION
    SELECT hadm_id, 'px:' || icd_version || ':' || trim(icd_code) AS token FROM procedures_icd
    UNION
    SELECT hadm_id, 'rx:' || lower(trim(drug)) AS token FROM prescriptions WHERE trim(drug) <> ''
),
bags AS (
    SELECT c.subject_id, c.hadm_id, list_sort(list_distinct(list(t.token))) AS codes
    FROM context c
    JOIN tokens t ON t.hadm_id = c.visit_hadm_id
    GROUP BY c.subject_id, c.hadm_id
)
SELECT s.subject_id,
       s.hadm_id,
       p.anchor_age + (year(a.admittime) - p.anchor_year) AS age,
       p.gender,
       coalesce(b.codes, []::VARCHAR[]) AS codes
FROM samples s
LEFT JOIN admissions a ON a.hadm_id = s.hadm_id
LEFT JOIN patients p ON p.subject_id = s.subject_id
LEFT JOIN bags b ON b.subject_id = s.subject_id AND b.hadm_id = s.hadm_id
ORDER BY s.subject_id, s.hadm_id
