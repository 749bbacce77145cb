"""Infrastructure as Dagster resources: the home folder, the DuckDB warehouse, dbt, raw sources."""

from resources.dbt import DBT_PROJECT, dbt_resource, dbt_vars
from resources.home import EagrlHome
from resources.sources import EhrSources
from resources.warehouse import Warehouse

__all__ = ["DBT_PROJECT", "EagrlHome", "EhrSources", "Warehouse", "dbt_resource", "dbt_vars"]
