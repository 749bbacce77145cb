-- One row per adult ICU stay with both labels.
-- mortality: death in hospital (which includes death in the ICU) during the stay's admission.
-- readmission: a later ICU stay of the same subject, or death, within the window after ICU
-- discharge; a death during the stay counts as well.
with stays as (
    select
        *,
        lead(intime) over (partition by subject_id order by intime, stay_id) as next_intime
    from {{ ref('stg_mimic_iv__icustays') }}
)

select
    s.stay_id,
    s.subject_id,
    s.hadm_id,
    s.intime,
    s.outtime,
    p.sex,
    cast(p.anchor_age + (year(s.intime) - p.anchor_year) as double) as age,
    cast(
        coalesce(a.hospital_expire_flag, 0) = 1 or a.deathtime is not null as integer
    ) as mortality_label,
    cast(
        coalesce(
            s.next_intime <= s.outtime + to_days({{ var('readmission_window_days') }}), false
        )
        or coalesce(
            a.deathtime <= s.outtime + to_days({{ var('readmission_window_days') }}), false
        )
        or coalesce(
            p.dod <= cast(s.outtime as date) + {{ var('readmission_window_days') }}, false
        )
        as integer
    ) as readmission_label
from stays as s
inner join {{ ref('stg_mimic_iv__admissions') }} as a on a.hadm_id = s.hadm_id
inner join {{ ref('stg_mimic_iv__patients') }} as p on p.subject_id = s.subject_id
where p.anchor_age + (year(s.intime) - p.anchor_year) >= {{ var('mimic_iv_min_age') }}
