-- Long format: one row per measured lab value; the wide file's header is the lab's source_column.
-- TJH labs are never negative: -1 is a "no result" sentinel (PyEHR sets it missing too).
with reports as (
    select *
    from {{ source('tjh', 'lab_reports') }}
    where re_date is not null
)

select
    patient_id,
    re_date as report_time,
    cast(re_date as date) as report_date,
    source_column,
    cast(value as double) as value
from (
    unpivot (
        select * exclude (age, gender, admission_time, discharge_time, outcome) from reports
    )
    on columns(* exclude (patient_id, re_date))
    into name source_column value value
)
where value <> -1  -- the sentinel only: raw_tjh refuses any other negative value
