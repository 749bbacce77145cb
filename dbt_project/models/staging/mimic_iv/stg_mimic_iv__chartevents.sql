select
    subject_id,
    hadm_id,
    stay_id,
    charttime,
    itemid,
    value,
    valuenum,
    valueuom
from {{ source('mimic_iv', 'chartevents') }}
where charttime is not null
