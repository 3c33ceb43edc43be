-- cohort_visits.sql
-- Returns the qualifying visits: admissions (from the table visit_lists) whose
-- conditions, procedures and medications are all non-empty, and, under
-- $adults_only, of a patient aged 18 or more at admission. A visit that does
-- not qualify is never a sample and never shown in a context, but it still
-- counts as "the next admission" for the visit before it (labels follow the
-- admissions as recorded).
-- Columns: every column of visit_lists, plus visit_index (0-based order among
-- the patient's qualifying visits: the context of visit i is visits 0..i).
SELECT *,
       row_number() OVER (PARTITION BY subject_id ORDER BY admission_seq) - 1 AS visit_index
FROM visit_lists
WHERE len(conditions) > 0
  AND len(procedures) > 0
  AND len(medications) > 0
  AND (NOT $adults_only OR age >= 18)
ORDER BY subject_id, visit_index
