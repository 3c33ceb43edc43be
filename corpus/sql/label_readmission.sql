-- label_readmission.sql
-- Returns one row per readmission sample: a qualifying visit i that has a next
-- admission i+1.
--   kare:     label = 1 when whole days (floored) from this admittime to the
--             next admittime < $readmission_days  (PyHealth 1.x / KARE).
--   pyhealth: label = 1 when the time from this dischtime to the next
--             admittime < $readmission_days days, exactly (PyHealth 2.x).
-- Flooring matters: 14 days 23 hours counts as 14 (< 15) under kare.
-- Columns: subject_id, hadm_id, visit_index, label.
SELECT subject_id, hadm_id, visit_index,
       CAST(CASE
           WHEN $convention = 'kare'
               THEN floor(epoch(next_admittime - admittime) / 86400) < $readmission_days
           ELSE epoch(next_admittime - dischtime) < $readmission_days * 86400
       END AS INTEGER) AS label
FROM cohort_visits
WHERE next_hadm_id IS NOT NULL
ORDER BY subject_id, visit_index
