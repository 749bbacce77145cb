-- Daily mean per feature over the last N calendar days of each ICU stay that have any
-- measurement; GCS total is the sum of the three daily component means.
with measurements as (
    select * from {{ ref('int_icu_chart_measurements_converted') }}
    union all
    select * from {{ ref('int_icu_lab_measurements_attached') }}
),

daily as (
    select stay_id, cast(charttime as date) as visit_date, feature_id, avg(value) as value
    from measurements
    group by all
),

gcs_total as (
    select stay_id, visit_date, 'gcs_total' as feature_id, sum(value) as value
    from daily
    where feature_id in ('gcs_eye', 'gcs_motor', 'gcs_verbal')
    group by stay_id, visit_date
    having count(value) = 3
),

all_daily as (
    select * from daily
    union all
    select * from gcs_total
),

kept_days as (
    select
        stay_id,
        visit_date,
        row_number() over (partition by stay_id order by visit_date desc) as days_from_end
    from (select distinct stay_id, visit_date from all_daily)
)

select
    d.stay_id,
    d.visit_date,
    d.feature_id,
    d.value
from all_daily as d
inner join kept_days as k using (stay_id, visit_date)
where k.days_from_end <= {{ var('mimic_iv_max_visits') }}
