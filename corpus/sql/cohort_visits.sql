-- cohort_visits.sql
-- Returns the qualifying visits: admissions whose conditions, procedures and
-- medications are all non-empty (they have a row in the table visit_items)
-- and, under $adults_only, of a patient aged 18 or more at admission. A visit
-- that does not qualify is never a sample and never shown in a context, but it
-- still counts as "the next admission" for the visit before it (labels follow
-- the admissions as recorded).
-- Columns: subject_id, hadm_id, admittime, dischtime, hospital_expire_flag,
--   age (anchor_age shifted to the admission year),
--   admission_seq (0-based order among all of the patient's admissions),
--   next_hadm_id, next_admittime, next_hospital_expire_flag (NULL for the last),
--   visit_index (0-based order among the patient's qualifying visits: the
--   context of visit i is visits 0..i).
-- No item lists here: the label rules never read them, and visit_lists.sql
-- joins them on for the qualifying visits only.
WITH ordered AS (
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
SELECT *,
       row_number() OVER (PARTITION BY subject_id ORDER BY admission_seq) - 1 AS visit_index
FROM ordered
WHERE hadm_id IN (SELECT hadm_id FROM visit_items)
  AND (NOT $adults_only OR age >= 18)
