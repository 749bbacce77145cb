"""Infrastructure as Dagster resources: the home folder, the DuckDB warehouse, dbt, raw sources."""

from resources.compute import Compute
from resources.dbt import DBT_PROJECT, dbt_resource, dbt_vars
from resources.home import EagrlHome
from resources.language_model import LanguageModel
from resources.mlflow_tracking import MlflowTracking
from resources.sources import EhrSources
from resources.warehouse import Warehouse

__all__ = [
    "DBT_PROJECT",
    "Compute",
    "EagrlHome",
    "EhrSources",
    "LanguageModel",
    "MlflowTracking",
    "Warehouse",
    "dbt_resource",
    "dbt_vars",
]
