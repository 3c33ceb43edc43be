-- synth_frequencies.sql
-- Returns the observed value combinations of the event tables with their row
-- counts, by frequency (ties by value), one kind per `kind` column:
--   dx:   diagnoses_icd  (icd_code, icd_version)
--   px:   procedures_icd (icd_code, icd_version)
--   rx:   prescriptions  (drug, drug_type, ndc, route)
--   unit: icustays       (first_careunit)
-- Columns: kind, a, b, c, d (the values, as text; unused ones NULL), n.
-- Reads the views diagnoses_icd, procedures_icd, prescriptions, icustays.
SELECT * FROM (
    SELECT 'dx' AS kind, icd_code AS a, CAST(icd_version AS VARCHAR) AS b, NULL AS c, NULL AS d, count(*) AS n
    FROM diagnoses_icd WHERE icd_code IS NOT NULL AND icd_version IS NOT NULL GROUP BY ALL
    UNION ALL
    SELECT 'px', icd_code, CAST(icd_version AS VARCHAR), NULL, NULL, count(*)
    FROM procedures_icd WHERE icd_code IS NOT NULL AND icd_version IS NOT NULL GROUP BY ALL
    UNION ALL
    SELECT 'rx', drug, drug_type, ndc, route, count(*)
    FROM prescriptions WHERE drug IS NOT NULL GROUP BY ALL
    UNION ALL
    SELECT 'unit', first_careunit, NULL, NULL, NULL, count(*)
    FROM icustays WHERE stay_id IS NOT NULL GROUP BY ALL
)
ORDER BY kind, n DESC, a, b NULLS FIRST, c NULLS FIRST, d NULLS FIRST
