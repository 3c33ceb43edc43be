-- visit_items.sql
-- Returns one row per admission that has items in all three sections (the
-- others never qualify as visits): hadm_id and conditions, procedures,
-- medications as lists of name ids (tables of item_names.sql), each item once, in record
-- order: conditions and procedures by their first seq_num (NULL last), then
-- name; medications by their first starttime (NULL last), then name.
-- The order comes from list_sort over (first seq/start, name id) structs: one
-- vectorised sort per list, where an ordered aggregate (list(x ORDER BY ...))
-- buffers and sorts every group on its own (~4x slower). A NULL starttime
-- sorts last as the largest BIGINT (epoch microseconds of real times are far
-- below it), which keeps the struct at two fields (a third cost ~15%).
-- Reads the views diagnoses_icd, procedures_icd, prescriptions and the tables
-- of item_names.sql.
WITH conditions AS (
    SELECT hadm_id,
           list_transform(list_sort(list(struct_pack(s := first_seq, id := name_id))), lambda e: e.id) AS conditions
    FROM (
        SELECT dx.hadm_id, c.name_id, min(coalesce(dx.seq_num, 2147483647)) AS first_seq
        FROM diagnoses_icd dx
        JOIN condition_codes c
          ON dx.icd_code IS NOT DISTINCT FROM c.icd_code AND dx.icd_version IS NOT DISTINCT FROM c.icd_version
        GROUP BY ALL
    )
    GROUP BY hadm_id
),
procedures AS (
    SELECT hadm_id,
           list_transform(list_sort(list(struct_pack(s := first_seq, id := name_id))), lambda e: e.id) AS procedures
    FROM (
        SELECT px.hadm_id, c.name_id, min(coalesce(px.seq_num, 2147483647)) AS first_seq
        FROM procedures_icd px
        JOIN procedure_codes c
          ON px.icd_code IS NOT DISTINCT FROM c.icd_code AND px.icd_version IS NOT DISTINCT FROM c.icd_version
        GROUP BY ALL
    )
    GROUP BY hadm_id
),
medications AS (
    SELECT hadm_id,
           list_transform(
               list_sort(list(struct_pack(t := coalesce(epoch_us(first_start), 9223372036854775807),
                                          id := name_id))),
               lambda e: e.id) AS medications
    FROM (
        SELECT p.hadm_id, m.name_id, min(p.starttime) AS first_start
        FROM prescriptions p
        JOIN medication_names m USING (drug)
        GROUP BY ALL
    )
    GROUP BY hadm_id
)
SELECT hadm_id, c.conditions, pr.procedures, m.medications
FROM conditions c
JOIN procedures pr USING (hadm_id)
JOIN medications m USING (hadm_id)
