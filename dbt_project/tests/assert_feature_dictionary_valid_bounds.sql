-- Physiologically possible bounds must be ordered and must contain the reference range.
-- Returns the offending rows.
select
    dataset,
    feature_id,
    reference_low,
    reference_high,
    valid_min,
    valid_max
from {{ ref('feature_dictionary') }}
where not (valid_min < valid_max)
   or (reference_low is not null and reference_low < valid_min)
   or (reference_high is not null and reference_high > valid_max)
   or (reference_low is not null and reference_high is not null and reference_low > reference_high)
