-- label_mortality.sql
-- Returns one row per mortality sample: a qualifying visit i that has a next
-- admission i+1; label = the next admission's hospital_expire_flag (1: the
-- patient died in hospital during admission i+1). Same rule under kare and
-- pyhealth (the conventions differ in which visits qualify).
-- Columns: subject_id, hadm_id, visit_index, label.
SELECT subject_id, hadm_id, visit_index, CAST(next_hospital_expire_flag AS INTEGER) AS label
FROM cohort_visits
WHERE next_hadm_id IS NOT NULL
ORDER BY subject_id, visit_index
