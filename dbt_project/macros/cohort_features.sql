{#- Feature ids of a dataset's cohort, in feature-dictionary order (demographics excluded).
    Read from the seed at run time, as dbt_utils.get_column_values does; empty while parsing. -#}
{% macro cohort_feature_ids(dataset) %}
    {% if not execute %}
        {{ return([]) }}
    {% endif %}
    {% set lab_ids = var('mimic_iv_lab_feature_ids') %}
    {% set query %}
        select feature_id
        from {{ ref('feature_dictionary') }}
        where dataset = '{{ dataset }}'
          and kind <> 'demographic'
          {% if dataset == 'mimic_iv' %}
            {% if var('mimic_iv_feature_set') == 'vitals' %}
          and source_column <> 'labevents'
            {% elif lab_ids | length > 0 %}
          and (source_column <> 'labevents' or feature_id in (
              {%- for f in lab_ids %}'{{ f }}'{% if not loop.last %}, {% endif %}{% endfor -%}))
            {% else %}
          and (source_column <> 'labevents' or in_default_panel)
            {% endif %}
          {% endif %}
        order by rowid
    {% endset %}
    {{ return(run_query(query).columns[0].values() | list) }}
{% endmacro %}

{#- One wide column per feature from a long (key, visit_date, feature_id, value) relation. -#}
{% macro pivot_features(feature_ids) %}
    {%- for f in feature_ids %}
    max(case when m.feature_id = '{{ f }}' then m.value end) as {{ f }}{{ "," if not loop.last }}
    {%- endfor %}
{% endmacro %}

{#- The MIMIC-IV cohort for one label column: one row per kept day of an adult ICU stay. -#}
{% macro mimic_iv_cohort(label_column) %}
{% set features = cohort_feature_ids('mimic_iv') %}
select
    s.stay_id as patient_id,
    s.subject_id as group_id,
    v.visit_index,
    v.visit_date,
    s.{{ label_column }} as label,
    s.sex,
    s.age,
    s.intime,
    s.outtime
    {%- for f in features %},
    f.{{ f }}
    {%- endfor %}
from {{ ref('int_icu_visits_daily') }} as v
inner join {{ ref('int_icu_stays_labeled') }} as s on s.stay_id = v.stay_id
inner join {{ ref('int_icu_visit_features_pivoted') }} as f
    on f.stay_id = v.stay_id and f.visit_date = v.visit_date
order by patient_id, visit_index
{% endmacro %}
