"""MLflow tracking in EAGRL_HOME: one MLflow run per training materialization, tagged with the
Dagster run id and partition, reused when the same Dagster run retries the step."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import mlflow
from dagster import AssetExecutionContext, ConfigurableResource
from mlflow.tracking import MlflowClient
from pydantic import Field


class MlflowTracking(ConfigurableResource):
    home: str = Field(description="EAGRL_HOME; the store is EAGRL_HOME/mlflow.")
    tracking_uri: str | None = Field(
        default=None,
        description="Another tracking server or store (e.g. http://127.0.0.1:5000). Empty: a "
        "SQLite store under EAGRL_HOME/mlflow, which also holds the model registry.",
    )

    @property
    def store(self) -> Path:
        return Path(self.home).expanduser().resolve() / "mlflow"

    @property
    def uri(self) -> str:
        if self.tracking_uri:
            return self.tracking_uri
        self.store.mkdir(parents=True, exist_ok=True)
        return f"sqlite:///{self.store / 'mlflow.db'}"

    def client(self) -> MlflowClient:
        return MlflowClient(tracking_uri=self.uri, registry_uri=self.uri)

    def _experiment_id(self, name: str) -> str:
        client = self.client()
        experiment = client.get_experiment_by_name(name)
        if experiment is not None:
            return experiment.experiment_id
        artifacts = (self.store / "artifacts" / name).as_uri()
        return client.create_experiment(name, artifact_location=artifacts)

    @contextlib.contextmanager
    def run(
        self,
        context: AssetExecutionContext,
        *,
        experiment: str,
        run_name: str,
        tags: dict[str, str] | None = None,
    ) -> Iterator[mlflow.ActiveRun]:
        """Start (or resume, for a retry of the same Dagster run and partition) an MLflow run."""
        mlflow.set_tracking_uri(self.uri)
        mlflow.set_registry_uri(self.uri)
        experiment_id = self._experiment_id(experiment)
        partition = context.partition_key if context.has_partition_key else ""
        asset = context.asset_key.to_user_string()
        run_tags = {
            "dagster.run_id": context.run_id,
            "dagster.asset": asset,
            "dagster.partition": partition,
            **(tags or {}),
        }
        existing = self.client().search_runs(
            [experiment_id],
            filter_string=(
                f"tags.`dagster.run_id` = '{context.run_id}' and "
                f"tags.`dagster.asset` = '{asset}' and tags.`dagster.partition` = '{partition}'"
            ),
            max_results=1,
        )
        if existing:
            active = mlflow.start_run(run_id=existing[0].info.run_id)
        else:
            active = mlflow.start_run(experiment_id=experiment_id, run_name=run_name, tags=run_tags)
        with active as run:
            yield run
