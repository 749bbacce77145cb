-- TJH COVID-19 mortality: one row per patient and calendar day, daily mean of the 73 labs.
-- depends_on: {{ ref('feature_dictionary') }}
{% set features = cohort_feature_ids('tjh') %}
with features as (
    select
        m.patient_id,
        m.visit_date
        {%- if features | length > 0 %},{% endif %}
        {{ pivot_features(features) }}
    from {{ ref('int_tjh_lab_results_daily') }} as m
    group by m.patient_id, m.visit_date
)

select
    v.patient_id,
    p.group_id,
    v.visit_index,
    v.visit_date,
    p.label,
    p.sex,
    p.age,
    p.admission_time,
    p.discharge_time
    {%- for f in features %},
    f.{{ f }}
    {%- endfor %}
from {{ ref('int_tjh_visits_daily') }} as v
inner join {{ ref('int_tjh_patients_labeled') }} as p on p.patient_id = v.patient_id
left join features as f on f.patient_id = v.patient_id and f.visit_date = v.visit_date
order by v.patient_id, v.visit_index
