-- One row per lab report that has a timestamp; the 14 rows without RE_DATE carry no labs.
select
    patient_id,
    re_date as report_time,
    cast(re_date as date) as report_date,
    cast(age as double) as age,
    case gender when 1 then 1 when 2 then 0 end as sex,
    admission_time,
    discharge_time,
    cast(outcome as integer) as outcome
from {{ source('tjh', 'lab_reports') }}
where re_date is not null
