-- A feature is identified by (dataset, feature_id); its display name must be unique within the
-- dataset too, since the LLM's <Important Features> answers are matched back by name.
-- Returns the offending keys.
select
    'feature_id' as duplicated_key,
    dataset,
    feature_id as value,
    count(*) as n_rows
from {{ ref('feature_dictionary') }}
group by dataset, feature_id
having count(*) > 1

union all

select
    'feature_name' as duplicated_key,
    dataset,
    lower(feature_name) as value,
    count(*) as n_rows
from {{ ref('feature_dictionary') }}
group by dataset, lower(feature_name)
having count(*) > 1
