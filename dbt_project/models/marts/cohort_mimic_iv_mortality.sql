-- MIMIC-IV in-hospital mortality: one row per kept day of an adult ICU stay.
-- depends_on: {{ ref('feature_dictionary') }}
{{ mimic_iv_cohort('mortality_label') }}
