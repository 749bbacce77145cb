{#- Rows whose combination of columns is not unique (dbt_utils' test, without the package:
    packages cannot be installed offline). -#}
{% test unique_combination(model, combination) %}
select {{ combination | join(', ') }}, count(*) as n_rows
from {{ model }}
group by {{ combination | join(', ') }}
having count(*) > 1
{% endtest %}
