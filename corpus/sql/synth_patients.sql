-- synth_patients.sql
-- Returns one row per source patient (the synthetic generator's patient
-- templates), ordered by subject_id: gender, anchor_age, anchor_year,
-- first_offset_s (seconds from 1 January of anchor_year to the first
-- admittime; NULL without admissions), outpatient_labs (lab events with no
-- hadm_id), dod_days (whole days from the last dischtime to dod, for a patient
-- who has a dod and did not die in hospital; NULL otherwise).
-- A valid admission is one ingest keeps: keys present, dischtime not before
-- admittime. Patients whose anchor_age or anchor_year is missing are left out,
-- as ingest excludes them.
-- Reads the views patients, admissions, labevents.
WITH valid AS (
    SELECT subject_id, hadm_id, admittime, dischtime, coalesce(hospital_expire_flag, 0) AS expire
    FROM admissions
    WHERE hadm_id IS NOT NULL AND admittime IS NOT NULL AND dischtime IS NOT NULL AND dischtime >= admittime
    QUALIFY count(*) OVER (PARTITION BY hadm_id) = 1
),
per_patient AS (
    SELECT subject_id, min(admittime) AS first_admit, max(dischtime) AS last_disch,
           max(expire) AS died
    FROM valid
    GROUP BY subject_id
),
outpatient AS (
    SELECT subject_id, count(*) AS outpatient_labs
    FROM labevents
    WHERE hadm_id IS NULL AND subject_id IS NOT NULL AND itemid IS NOT NULL
    GROUP BY subject_id
),
people AS (
    SELECT * FROM patients
    WHERE subject_id IS NOT NULL AND anchor_age IS NOT NULL AND anchor_year IS NOT NULL
    QUALIFY count(*) OVER (PARTITION BY subject_id) = 1
)
SELECT p.subject_id, p.gender, p.anchor_age, p.anchor_year,
       CAST(epoch(a.first_admit) - epoch(make_timestamp(p.anchor_year, 1, 1, 0, 0, 0)) AS BIGINT) AS first_offset_s,
       coalesce(o.outpatient_labs, 0) AS outpatient_labs,
       CASE WHEN p.dod IS NOT NULL AND a.died = 0
            THEN greatest(CAST(p.dod - CAST(a.last_disch AS DATE) AS BIGINT), 0) END AS dod_days
FROM people p
LEFT JOIN per_patient a USING (subject_id)
LEFT JOIN outpatient o USING (subject_id)
ORDER BY p.subject_id
