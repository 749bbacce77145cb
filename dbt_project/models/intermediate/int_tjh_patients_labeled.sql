-- One row per TJH patient with a timestamped report: demographics and the mortality label.
select
    patient_id,
    patient_id as group_id,
    any_value(sex) as sex,
    any_value(age) as age,
    any_value(outcome) as label,
    min(admission_time) as admission_time,
    max(discharge_time) as discharge_time,
    count(distinct outcome) as n_distinct_outcomes
from {{ ref('stg_tjh__lab_reports') }}
group by patient_id
