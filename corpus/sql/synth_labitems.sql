-- synth_labitems.sql
-- Returns one row per lab itemid seen in labevents, by frequency (ties by
-- itemid): n (rows), valueuom (its most frequent unit, NULL if none),
-- numeric (share of rows with a valuenum), mean and sd of valuenum (sd 0 for
-- a single value), abnormal (share of rows whose flag is set).
-- Reads the view labevents.
SELECT itemid, count(*) AS n,
       mode(valueuom) AS valueuom,
       count(valuenum) / count(*) AS numeric,
       coalesce(avg(valuenum), 0) AS mean,
       coalesce(stddev_samp(valuenum), 0) AS sd,
       count(flag) / count(*) AS abnormal,
       min(flag) AS flag
FROM labevents
WHERE subject_id IS NOT NULL AND itemid IS NOT NULL
GROUP BY itemid
ORDER BY n DESC, itemid
