-- registry_sepsis.sql
-- Returns the sepsis registry: ONE ROW PER ICU STAY of the PhysioNet/CinC
-- Challenge 2019 files matched by $glob (one pipe-separated file per stay,
-- pNNNNNN.psv, one row per ICU hour, missing values written NaN), sorted by
-- subject_id. Parameters: $glob (path pattern), $window_hours (integer > 0).
--
-- Columns (described for questions in schemas/registry_sepsis.yaml):
--   subject_id             the stay's record id: the file name's digits (p100001 -> 100001)
--   age                    years
--   gender                 'female' (Gender = 0) | 'male' (Gender = 1)
--   icu_unit               'MICU' (Unit1 = 1) | 'SICU' (Unit2 = 1) | 'unknown' (both missing)
--   hospital_to_icu_hours  hours from hospital admission to ICU admission = -HospAdmTime
--                          (the source counts hours from ICU admission, negative before it)
--   <var>_mean             for each of the 34 vitals/labs, e.g. hr_mean, baseexcess_mean,
--                          troponini_mean: the mean of its hourly values over ICU hours
--                          1..$window_hours (ICULOS <= $window_hours); NULL when it was
--                          never measured in that window
--   sepsis                 1 when any hour has SepsisLabel = 1, else 0
--   hours_to_sepsis        ICULOS of the first SepsisLabel = 1 hour plus 6 (the label is set
--                          from 6 h before Sepsis-3 onset, so this is the onset hour); NULL
--                          without sepsis; it may exceed icu_los_hours when the
--                          record ends within 6 h of onset
--   icu_los_hours          max(ICULOS): the stay's last recorded ICU hour
--
-- Edge cases: ICULOS does not always start at 1 (a stay's first rows may be
-- missing), so the window is counted in ICU hours, not in rows. Demographics
-- are constant within a stay in the source; the first hour's value is taken.
-- The window means may include the 6 labelled hours before onset: they are
-- registry features, not predictors of `sepsis` (no question asks for it).
-- Column types are fixed here (auto_detect off): sniffing looks at the first
-- file only and types columns that hold decimals elsewhere as integers or text.
WITH hours AS (
    SELECT *
    FROM read_csv(
        $glob,
        delim = '|',
        header = true,
        nullstr = 'NaN',
        filename = true,
        auto_detect = false,
        columns = {
            'HR': 'DOUBLE', 'O2Sat': 'DOUBLE', 'Temp': 'DOUBLE', 'SBP': 'DOUBLE', 'MAP': 'DOUBLE',
            'DBP': 'DOUBLE', 'Resp': 'DOUBLE', 'EtCO2': 'DOUBLE', 'BaseExcess': 'DOUBLE', 'HCO3': 'DOUBLE',
            'FiO2': 'DOUBLE', 'pH': 'DOUBLE', 'PaCO2': 'DOUBLE', 'SaO2': 'DOUBLE', 'AST': 'DOUBLE',
            'BUN': 'DOUBLE', 'Alkalinephos': 'DOUBLE', 'Calcium': 'DOUBLE', 'Chloride': 'DOUBLE',
            'Creatinine': 'DOUBLE', 'Bilirubin_direct': 'DOUBLE', 'Glucose': 'DOUBLE', 'Lactate': 'DOUBLE',
            'Magnesium': 'DOUBLE', 'Phosphate': 'DOUBLE', 'Potassium': 'DOUBLE', 'Bilirubin_total': 'DOUBLE',
            'TroponinI': 'DOUBLE', 'Hct': 'DOUBLE', 'Hgb': 'DOUBLE', 'PTT': 'DOUBLE', 'WBC': 'DOUBLE',
            'Fibrinogen': 'DOUBLE', 'Platelets': 'DOUBLE',
            'Age': 'DOUBLE', 'Gender': 'INTEGER', 'Unit1': 'INTEGER', 'Unit2': 'INTEGER',
            'HospAdmTime': 'DOUBLE', 'ICULOS': 'INTEGER', 'SepsisLabel': 'INTEGER'
        }
    )
),
stays AS (
    SELECT
        CAST(regexp_extract(filename, 'p(\d+)\.psv$', 1) AS BIGINT) AS subject_id,
        -- first hour's demographics (arg_min skips NULL values)
        arg_min(Age, ICULOS) AS age,
        arg_min(Gender, ICULOS) AS gender_code,
        arg_min(Unit1, ICULOS) AS unit1,
        arg_min(Unit2, ICULOS) AS unit2,
        arg_min(HospAdmTime, ICULOS) AS hosp_adm_time,
        avg(HR) FILTER (WHERE ICULOS <= $window_hours) AS hr_mean,
        avg(O2Sat) FILTER (WHERE ICULOS <= $window_hours) AS o2sat_mean,
        avg(Temp) FILTER (WHERE ICULOS <= $window_hours) AS temp_mean,
        avg(SBP) FILTER (WHERE ICULOS <= $window_hours) AS sbp_mean,
        avg(MAP) FILTER (WHERE ICULOS <= $window_hours) AS map_mean,
        avg(DBP) FILTER (WHERE ICULOS <= $window_hours) AS dbp_mean,
        avg(Resp) FILTER (WHERE ICULOS <= $window_hours) AS resp_mean,
        avg(EtCO2) FILTER (WHERE ICULOS <= $window_hours) AS etco2_mean,
        avg(BaseExcess) FILTER (WHERE ICULOS <= $window_hours) AS baseexcess_mean,
        avg(HCO3) FILTER (WHERE ICULOS <= $window_hours) AS hco3_mean,
        avg(FiO2) FILTER (WHERE ICULOS <= $window_hours) AS fio2_mean,
        avg(pH) FILTER (WHERE ICULOS <= $window_hours) AS ph_mean,
        avg(PaCO2) FILTER (WHERE ICULOS <= $window_hours) AS paco2_mean,
        avg(SaO2) FILTER (WHERE ICULOS <= $window_hours) AS sao2_mean,
        avg(AST) FILTER (WHERE ICULOS <= $window_hours) AS ast_mean,
        avg(BUN) FILTER (WHERE ICULOS <= $window_hours) AS bun_mean,
        avg(Alkalinephos) FILTER (WHERE ICULOS <= $window_hours) AS alkalinephos_mean,
        avg(Calcium) FILTER (WHERE ICULOS <= $window_hours) AS calcium_mean,
        avg(Chloride) FILTER (WHERE ICULOS <= $window_hours) AS chloride_mean,
        avg(Creatinine) FILTER (WHERE ICULOS <= $window_hours) AS creatinine_mean,
        avg(Bilirubin_direct) FILTER (WHERE ICULOS <= $window_hours) AS bilirubin_direct_mean,
        avg(Glucose) FILTER (WHERE ICULOS <= $window_hours) AS glucose_mean,
        avg(Lactate) FILTER (WHERE ICULOS <= $window_hours) AS lactate_mean,
        avg(Magnesium) FILTER (WHERE ICULOS <= $window_hours) AS magnesium_mean,
        avg(Phosphate) FILTER (WHERE ICULOS <= $window_hours) AS phosphate_mean,
        avg(Potassium) FILTER (WHERE ICULOS <= $window_hours) AS potassium_mean,
        avg(Bilirubin_total) FILTER (WHERE ICULOS <= $window_hours) AS bilirubin_total_mean,
        avg(TroponinI) FILTER (WHERE ICULOS <= $window_hours) AS troponini_mean,
        avg(Hct) FILTER (WHERE ICULOS <= $window_hours) AS hct_mean,
        avg(Hgb) FILTER (WHERE ICULOS <= $window_hours) AS hgb_mean,
        avg(PTT) FILTER (WHERE ICULOS <= $window_hours) AS ptt_mean,
        avg(WBC) FILTER (WHERE ICULOS <= $window_hours) AS wbc_mean,
        avg(Fibrinogen) FILTER (WHERE ICULOS <= $window_hours) AS fibrinogen_mean,
        avg(Platelets) FILTER (WHERE ICULOS <= $window_hours) AS platelets_mean,
        CAST(coalesce(max(SepsisLabel), 0) AS INTEGER) AS sepsis,
        min(ICULOS) FILTER (WHERE SepsisLabel = 1) + 6 AS hours_to_sepsis,
        max(ICULOS) AS icu_los_hours
    FROM hours
    GROUP BY filename
)
SELECT
    subject_id,
    age,
    CASE gender_code WHEN 0 THEN 'female' WHEN 1 THEN 'male' END AS gender,
    CASE WHEN unit1 = 1 THEN 'MICU' WHEN unit2 = 1 THEN 'SICU' ELSE 'unknown' END AS icu_unit,
    -- 0.0 - x, not -x: a same-hour transfer reads 0.0, never -0.0
    0.0 - hosp_adm_time AS hospital_to_icu_hours,
    COLUMNS('_mean$'),
    sepsis,
    CAST(hours_to_sepsis AS INTEGER) AS hours_to_sepsis,
    CAST(icu_los_hours AS INTEGER) AS icu_los_hours
FROM stays
ORDER BY subject_id
