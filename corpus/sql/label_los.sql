-- label_los.sql
-- Returns one row per length-of-stay sample: every qualifying visit (the last
-- one included). Length of stay = whole days (floored) from admittime to
-- dischtime; label = index of the class in $los_bins whose range holds it:
-- with bins [0, 3, 7, 14] the classes are [0,3) [3,7) [7,14) [14,inf) -> 0..3.
-- Columns: subject_id, hadm_id, visit_index, label.
SELECT subject_id, hadm_id, visit_index,
       CAST(len(list_filter($los_bins, lambda edge: edge <= floor(epoch(dischtime - admittime) / 86400))) - 1
            AS INTEGER) AS label
FROM cohort_visits
ORDER BY subject_id, visit_index
