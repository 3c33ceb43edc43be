-- item_names.sql
-- Creates the name dictionaries of the three item sections as temp tables, so
-- that the large aggregations group and sort integers instead of strings:
--   condition_codes / procedure_codes: icd_code, icd_version, name, name_id
--     (every code that occurs, named by MIMIC's dictionary; a code missing from
--     it is named 'ICD-<version> diagnosis|procedure <code>'),
--   medication_names: drug (as recorded), name (trim(drug), non-empty), name_id.
-- name_id is the dense rank of the name in byte order (NULLS LAST, as ORDER BY
-- name), so ordering by name_id is ordering by name, and codes sharing a name
-- share an id (they are one item, as before). <section>_name_list holds the
-- names by id (element name_id is its name), to turn id lists back into names.
-- Reads the views diagnoses_icd, procedures_icd, prescriptions, d_icd_diagnoses,
-- d_icd_procedures.
CREATE TEMP TABLE condition_codes AS
SELECT icd_code, icd_version, name, CAST(dense_rank() OVER (ORDER BY name) AS INTEGER) AS name_id
FROM (
    SELECT c.icd_code, c.icd_version,
           coalesce(dd.long_title, 'ICD-' || c.icd_version || ' diagnosis ' || c.icd_code) AS name
    FROM (SELECT DISTINCT icd_code, icd_version FROM diagnoses_icd) c
    LEFT JOIN d_icd_diagnoses dd USING (icd_code, icd_version)
);
CREATE TEMP TABLE procedure_codes AS
SELECT icd_code, icd_version, name, CAST(dense_rank() OVER (ORDER BY name) AS INTEGER) AS name_id
FROM (
    SELECT c.icd_code, c.icd_version,
           coalesce(dp.long_title, 'ICD-' || c.icd_version || ' procedure ' || c.icd_code) AS name
    FROM (SELECT DISTINCT icd_code, icd_version FROM procedures_icd) c
    LEFT JOIN d_icd_procedures dp USING (icd_code, icd_version)
);
-- Keyed by the drug text as recorded: trim() runs once per distinct text, not once
-- per prescription, and the join probes with the stored string.
CREATE TEMP TABLE medication_names AS
SELECT drug, name, CAST(dense_rank() OVER (ORDER BY name) AS INTEGER) AS name_id
FROM (SELECT drug, trim(drug) AS name FROM (SELECT DISTINCT drug FROM prescriptions))
WHERE name <> '';
CREATE TEMP TABLE name_lists AS
SELECT (SELECT list(name ORDER BY name_id) FROM (SELECT DISTINCT name_id, name FROM condition_codes)) AS conditions,
       (SELECT list(name ORDER BY name_id) FROM (SELECT DISTINCT name_id, name FROM procedure_codes)) AS procedures,
       (SELECT list(name ORDER BY name_id) FROM (SELECT DISTINCT name_id, name FROM medication_names)) AS medications;
