-- Chart events mapped to the 17 variables, in one unit each, inside the ICU stay window.
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
    end as value
from {{ ref('stg_mimic_iv__chartevents') }} as c
inner join {{ ref('mimic_iv_chart_items') }} as m on m.itemid = c.itemid
inner join {{ ref('int_icu_stays_labeled') }} as s
    on s.stay_id = c.stay_id and c.charttime between s.intime and s.outtime
left join {{ ref('mimic_iv_gcs_values') }} as g
    on g.feature_id = m.feature_id and lower(trim(g.value_text)) = lower(trim(c.value))
where value is not null
