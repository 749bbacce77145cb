select
    subject_id,
    hadm_id,
    admittime,
    dischtime,
    deathtime,
    hospital_expire_flag
from {{ source('mimic_iv', 'admissions') }}
