-- One visit per patient and calendar day with at least one report (PyEHR's daily merge).
select
    patient_id,
    report_date as visit_date,
    cast(row_number() over (partition by patient_id order by report_date) - 1 as integer)
        as visit_index
from (select distinct patient_id, report_date from {{ ref('stg_tjh__lab_reports') }})
