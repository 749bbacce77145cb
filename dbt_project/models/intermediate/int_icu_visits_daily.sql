-- The kept days of each ICU stay as visits, numbered from 0 in time order.
select
    stay_id,
    visit_date,
    cast(row_number() over (partition by stay_id order by visit_date) - 1 as integer)
        as visit_index
from (select distinct stay_id, visit_date from {{ ref('int_icu_measurements_daily') }})
