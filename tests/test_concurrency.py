"""Two materializations at once on one warehouse: dbt rebuilds it (the writer) while another
process builds a cohort from it (a reader). Both succeed and the DuckDB file stays intact,
because readers open read-only and retry while the writer holds the lock, and dbt retries too."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import duckdb
import pytest

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
SCRIPT = """
import json, sys, time
from dagster import AssetSelection, materialize
from definitions import all_assets, build_resources

role, home = sys.argv[1], sys.argv[2]
resources = build_resources(home)
if role == "writer":
    selection, partition = AssetSelection.groups("warehouse"), None
else:
    selection, partition = AssetSelection.assets("cohort_dataset"), "tjh-mortality"
started = time.time()
result = materialize(
    all_assets, selection=selection, partition_key=partition, resources=resources,
    raise_on_error=False,
)
print(json.dumps({"role": role, "success": result.success, "start": started, "end": time.time()}))
"""


def _counts(path: Path) -> dict[str, int]:
    with duckdb.connect(str(path), read_only=True) as connection:
        return {
            table: connection.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
            for table in ("cohort_tjh_mortality", "cohort_mimic_iv_mortality")
        }


def test_writer_and_reader_at_once_leave_the_warehouse_intact(lineage_home):
    home = lineage_home["home"]
    warehouse = home / "warehouse.duckdb"
    before = _counts(warehouse)
    env = {**os.environ, "EAGRL_HOME": str(home), "EAGRL_CPU_THREADS": "1"}
    processes = []
    for role in ("writer", "reader"):
        processes.append(
            subprocess.Popen(
                [sys.executable, "-c", SCRIPT, role, str(home)],
                cwd=REPO,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
        time.sleep(1.0)  # the writer first, so the reader meets its lock
    outcomes = {}
    for process in processes:
        out, err = process.communicate(timeout=600)
        assert process.returncode == 0, err[-3000:]
        line = [raw for raw in out.splitlines() if raw.startswith("{")][-1]
        outcome = json.loads(line)
        outcomes[outcome["role"]] = outcome
    assert outcomes["writer"]["success"], "the dbt build failed under a concurrent reader"
    assert outcomes["reader"]["success"], "the cohort build failed under a concurrent writer"
    writer, reader = outcomes["writer"], outcomes["reader"]
    assert reader["start"] < writer["end"] and writer["start"] < reader["end"], (
        "the two materializations did not overlap; the test proves nothing"
    )
    assert _counts(warehouse) == before
    manifest = home / "artifacts" / "cohort_dataset" / "tjh-mortality" / "manifest.json"
    assert json.loads(manifest.read_text())["summary"]["test"]["patients"] > 0
