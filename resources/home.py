"""EAGRL_HOME: the one folder every run writes to (warehouse, artifacts, MLflow, Dagster)."""

from __future__ import annotations

from pathlib import Path

from dagster import ConfigurableResource
from pydantic import Field


class EagrlHome(ConfigurableResource):
    """Where a run's outputs live; tests point it at a temporary directory."""

    path: str = Field(description="The home folder (EAGRL_HOME); created on first use.")

    @property
    def root(self) -> Path:
        root = Path(self.path).expanduser().resolve()
        root.mkdir(parents=True, exist_ok=True)
        return root

    @property
    def artifacts(self) -> Path:
        return self.root / "artifacts"

    def artifact_path(self, asset: str, partition: str | None = None) -> Path:
        """``artifacts/<asset>/<partition>/`` (not created): one folder per asset and partition;
        a grid cell ``tjh-mortality|eagrl`` is ``<asset>/tjh-mortality/eagrl/``, so the variants
        of a dataset-task sit side by side."""
        return self.artifacts / asset / Path(*str(partition or "_").split("|"))

    def artifact_dir(self, asset: str, partition: str | None = None) -> Path:
        """:meth:`artifact_path`, created."""
        folder = self.artifact_path(asset, partition)
        folder.mkdir(parents=True, exist_ok=True)
        return folder

    def raw_dir(self, asset: str) -> Path:
        """Raw snapshots sit at ``artifacts/<asset>/`` where dbt's sources expect them."""
        folder = self.artifacts / asset
        folder.mkdir(parents=True, exist_ok=True)
        return folder

    @property
    def synthetic(self) -> Path:
        return self.root / "synthetic"

    @property
    def warehouse_path(self) -> Path:
        return self.root / "warehouse.duckdb"

    @property
    def dbt_target(self) -> Path:
        return self.root / "dbt" / "target"
