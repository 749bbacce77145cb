select
    subject_id,
    hadm_id,
    stay_id,
    intime,
    outtime,
    los
from {{ source('mimic_iv', 'icustays') }}
where intime is not null and outtime is not null and outtime > intime
