-- One row per kept day of an ICU stay, one column per feature: pivoted once and shared by the
-- mortality and readmission marts.
-- depends_on: {{ ref('feature_dictionary') }}
{% set features = cohort_feature_ids('mimic_iv') %}
select
    m.stay_id,
    m.visit_date
    {%- if features | length > 0 %},{% endif %}
    {{ pivot_features(features) }}
from {{ ref('int_icu_measurements_daily') }} as m
group by m.stay_id, m.visit_date
