-- Chart events mapped to the 17 variables, in one unit each, inside the ICU stay window.
-- A view: it is aggregated once, by int_icu_measurements_daily, so a table would only cost I/O.
{{ config(materialized='view') }}

with events as not materialized (
    select c.stay_id, c.charttime, c.value, c.valuenum, m.feature_id, m.conversion
    from {{ ref('stg_mimic_iv__chartevents') }} as c
    inner join {{ ref('mimic_iv_chart_items') }} as m on m.itemid = c.itemid
    inner join {{ ref('int_icu_stays_labeled') }} as s
        on s.stay_id = c.stay_id and c.charttime between s.intime and s.outtime
),

numeric_values as (
    select
        stay_id,
        charttime,
        feature_id,
        case conversion
            when 'fahrenheit_to_celsius' then (valuenum - 32) * 5.0 / 9.0
            when 'lbs_to_kg' then valuenum * 0.453592
            when 'inch_to_cm' then valuenum * 2.54
            when 'percent_to_fraction'
                then case when valuenum > 1 then valuenum / 100.0 else valuenum end
            else valuenum
        end as converted_value
    from events
    where conversion not in ('gcs_text', 'capillary_refill_text')
),

-- Text items (GCS components, capillary refill) are a small share of the rows: only they pay
-- for the case-insensitive text match.
text_values as (
    select
        e.stay_id,
        e.charttime,
        e.feature_id,
        case e.conversion when 'gcs_text' then coalesce(g.score, e.valuenum) else g.score end
            as converted_value
    from events as e
    left join {{ ref('mimic_iv_gcs_values') }} as g
        on g.feature_id = e.feature_id and lower(trim(g.value_text)) = lower(trim(e.value))
    where e.conversion in ('gcs_text', 'capillary_refill_text')
)

-- An unmapped text or a NULL valuenum converts to NULL: drop it here, so an all-NULL day never
-- becomes a visit.
select stay_id, charttime, feature_id, converted_value as value
from (select * from numeric_values union all select * from text_values)
where converted_value is not null
