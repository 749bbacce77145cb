-- Daily mean per lab; the feature dictionary names the labs the cohort keeps (73 of 74).
select
    r.patient_id,
    r.report_date as visit_date,
    d.feature_id,
    avg(r.value) as value
from {{ ref('stg_tjh__lab_results') }} as r
inner join {{ ref('feature_dictionary') }} as d
    on d.dataset = 'tjh' and d.source_column = r.source_column
group by all
