-- Chart events mapped to the 17 variables, in one unit each, inside the ICU stay window.
-- A view: it is aggregated once, by int_icu_measurements_daily, so a table would only cost I/O.
{{ config(materialized='view') }}

with converted as (
    select
        c.stay_id,
        c.charttime,
        m.feature_id,
        case m.conversion
            when 'fahrenheit_to_celsius' then (c.valuenum - 32) * 5.0 / 9.0
            when 'lbs_to_kg' then c.valuenum * 0.453592
            when 'inch_to_cm' then c.valuenum * 2.54
            when 'percent_to_fraction'
                then case when c.valuenum > 1 then c.valuenum / 100.0 else c.valuenum end
            when 'gcs_text' then coalesce(g.score, c.valuenum)
            when 'capillary_refill_text' then g.score
            else c.valuenum
        end as converted_value
    from {{ ref('stg_mimic_iv__chartevents') }} as c
    inner join {{ ref('mimic_iv_chart_items') }} as m on m.itemid = c.itemid
    inner join {{ ref('int_icu_stays_labeled') }} as s
        on s.stay_id = c.stay_id and c.charttime between s.intime and s.outtime
    left join {{ ref('mimic_iv_gcs_values') }} as g
        on g.feature_id = m.feature_id and lower(trim(g.value_text)) = lower(trim(c.value))
)

-- An unmapped text or a NULL valuenum converts to NULL: drop it here, so an all-NULL day never
-- becomes a visit.
select stay_id, charttime, feature_id, converted_value as value
from converted
where converted_value is not null
