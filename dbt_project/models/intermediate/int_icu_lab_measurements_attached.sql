-- Labs attached to ICU stays by subject and time (not by hadm_id, which is NULL for about a
-- quarter of lab rows). Empty when the feature set is 'vitals'. A view, aggregated once downstream.
{{ config(materialized='view') }}
{% set lab_ids = var('mimic_iv_lab_feature_ids') %}
select
    s.stay_id,
    l.charttime,
    i.feature_id,
    l.valuenum as value
from {{ ref('stg_mimic_iv__labevents') }} as l
inner join {{ ref('mimic_iv_lab_items') }} as i on i.itemid = l.itemid
inner join {{ ref('feature_dictionary') }} as d
    on d.dataset = 'mimic_iv' and d.feature_id = i.feature_id
inner join {{ ref('int_icu_stays_labeled') }} as s
    on s.subject_id = l.subject_id and l.charttime between s.intime and s.outtime
where
    {% if var('mimic_iv_feature_set') == 'vitals' %}
    false
    {% elif lab_ids | length > 0 %}
    i.feature_id in ({% for f in lab_ids %}'{{ f }}'{% if not loop.last %}, {% endif %}{% endfor %})
    {% else %}
    d.in_default_panel
    {% endif %}
