"""The DuckDB warehouse: dbt is its only writer; everyone else reads with short read-only
connections, retried while a writer holds the lock."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from pathlib import Path

import duckdb
import pandas as pd
from dagster import ConfigurableResource
from pydantic import Field


class Warehouse(ConfigurableResource):
    path: str = Field(description="DuckDB file that dbt builds (EAGRL_HOME/warehouse.duckdb).")
    lock_timeout_s: float = Field(
        default=120.0, description="How long a reader waits for a writer's lock to go."
    )

    @contextlib.contextmanager
    def read_only(self) -> Iterator[duckdb.DuckDBPyConnection]:
        if not Path(self.path).exists():
            raise FileNotFoundError(
                f"{self.path}: the warehouse does not exist yet. Fix: materialize the dbt "
                "assets (group 'warehouse') first."
            )
        deadline = time.monotonic() + self.lock_timeout_s
        while True:
            try:
                connection = duckdb.connect(self.path, read_only=True)
                break
            except duckdb.IOException:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)
        try:
            yield connection
        finally:
            connection.close()

    def query(self, sql: str, params: list | None = None) -> pd.DataFrame:
        with self.read_only() as connection:
            return connection.execute(sql, params or []).df()

    def table(self, name: str) -> pd.DataFrame:
        return self.query(f'SELECT * FROM "{name}"')
