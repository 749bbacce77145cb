-- MIMIC-IV 30-day readmission (ICU readmission or death): one row per kept day of an ICU stay.
-- depends_on: {{ ref('feature_dictionary') }}
{{ mimic_iv_cohort('readmission_label') }}
