select
    subject_id,
    case upper(gender) when 'M' then 1 when 'F' then 0 end as sex,
    anchor_age,
    anchor_year,
    dod
from {{ source('mimic_iv', 'patients') }}
