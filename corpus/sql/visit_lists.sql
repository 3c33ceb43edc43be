-- visit_lists.sql
-- Returns the qualifying visits with what was recorded during them, named by
-- MIMIC's own dictionaries, in order per patient:
--   subject_id, hadm_id, visit_index,
--   conditions, procedures, medications (lists of distinct names, in record
--   order: see visit_items.sql).
-- Reads the tables cohort_visits, visit_items and name_lists (item_names.sql).
SELECT v.subject_id, v.hadm_id, v.visit_index,
       list_transform(i.conditions, lambda id: n.conditions[id]) AS conditions,
       list_transform(i.procedures, lambda id: n.procedures[id]) AS procedures,
       list_transform(i.medications, lambda id: n.medications[id]) AS medications
FROM cohort_visits v
JOIN visit_items i USING (hadm_id)
CROSS JOIN name_lists n
ORDER BY v.subject_id, v.visit_index
