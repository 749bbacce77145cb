select
    stay_id,
    charttime,
    itemid,
    value,
    valuenum
from {{ source('mimic_iv', 'chartevents') }}
where charttime is not null
