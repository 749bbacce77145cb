-- hadm_id is NULL for about a quarter of lab rows (outpatient draws); the intermediate model
-- attaches labs to ICU stays by subject and time instead, so those rows are kept on purpose.
select
    subject_id,
    hadm_id,
    itemid,
    charttime,
    valuenum
from {{ source('mimic_iv', 'labevents') }}
where charttime is not null and valuenum is not null
