"""End to end through the UI's API: `dagster dev` (webserver and daemon) on a free loopback port,
the asset graph, checks, schedules and sensors over GraphQL, and a cheap run launched and
finished through GraphQL. `dagster dev` runs in its own session and the whole process group is
stopped at the end (it ignores SIGTERM/SIGINT when started as a background job of a shell)."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from assets.partitions import COHORTS
from eagrl_pipeline.variants import VARIANTS

pytestmark = pytest.mark.slow

REPO_ROOT = Path(__file__).resolve().parents[1]
LOCATION = "eagrl_pipeline"
REPOSITORY = "__repository__"

REPOSITORY_QUERY = """
query Repository($selector: RepositorySelector!) {
  repositoryOrError(repositorySelector: $selector) {
    __typename
    ... on Repository {
      jobs { name }
      schedules { name cronSchedule executionTimezone scheduleState { status } }
      sensors { name sensorState { status } }
    }
    ... on Error { message }
  }
}
"""

ASSETS_QUERY = """
query Assets {
  assetNodes {
    assetKey { path }
    assetChecksOrError {
      __typename
      ... on AssetChecks { checks { name } }
    }
  }
}
"""

LAUNCH_MUTATION = """
mutation Launch($executionParams: ExecutionParams!) {
  launchRun(executionParams: $executionParams) {
    __typename
    ... on LaunchRunSuccess { run { runId status } }
    ... on RunConfigValidationInvalid { errors { message } }
    ... on Error { message }
  }
}
"""

GRID_QUERY = """
query Grid {
  assetNodes(assetKeys: [{path: ["rl_checkpoint"]}, {path: ["evaluation_report"]}]) {
    assetKey { path }
    partitionKeysByDimension { name partitionKeys }
  }
}
"""

BACKFILL_MUTATION = """
mutation Backfill($params: LaunchBackfillParams!) {
  launchPartitionBackfill(backfillParams: $params) {
    __typename
    ... on LaunchBackfillSuccess { backfillId launchedRunIds }
    ... on Error { message }
  }
}
"""

RUN_TAGS_QUERY = """
query RunTags($runId: ID!) {
  runOrError(runId: $runId) {
    __typename
    ... on Run { tags { key value } }
  }
}
"""

RUN_QUERY = """
query Run($runId: ID!) {
  runOrError(runId: $runId) {
    __typename
    ... on Run { status }
    ... on Error { message }
  }
}
"""


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _graphql(base: str, query: str, variables: dict | None = None) -> dict:
    body = json.dumps({"query": query, "variables": variables or {}}).encode()
    request = urllib.request.Request(
        f"{base}/graphql", data=body, headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=60) as response:
        payload = json.load(response)
    assert "errors" not in payload, payload["errors"]
    return payload["data"]


def _wait(what: str, timeout: float, probe, log: Path):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = probe()
        if value:
            return value
        time.sleep(2)
    tail = log.read_text(errors="replace")[-4000:] if log.exists() else ""
    pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}; dagster dev log:\n{tail}")


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def _stop_group(process: subprocess.Popen) -> None:
    """SIGTERM to the whole group, a grace period, then SIGKILL to whatever is left."""
    pgid = process.pid  # the leader of its own session: the group id is its pid
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGTERM)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and (process.poll() is None or _group_alive(pgid)):
        time.sleep(0.5)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGKILL)
    process.wait(timeout=30)


def test_dagster_dev_serves_the_graph_and_runs_a_cheap_selection(tmp_path: Path):
    dagster = Path(sys.executable).parent / "dagster"
    assert dagster.exists(), dagster
    dagster_home = tmp_path / "dagster_home"
    dagster_home.mkdir()
    shutil.copy(REPO_ROOT / "dagster.yaml", dagster_home / "dagster.yaml")
    env = {
        **os.environ,
        "DAGSTER_HOME": str(dagster_home),
        "EAGRL_HOME": str(tmp_path / "eagrl_home"),
        "EAGRL_MIMIC_IV_FEATURE_SET": "vitals",
        "DAGSTER_DISABLE_TELEMETRY": "1",
    }
    for name in ("EAGRL_DEPLOYMENT", "EAGRL_TJH_PATH", "EAGRL_MIMIC_IV_ROOT"):
        env.pop(name, None)
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    log = tmp_path / "dagster_dev.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [str(dagster), "dev", "-w", "workspace.yaml", "-h", "127.0.0.1", "-p", str(port)],
            cwd=REPO_ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    try:
        assert os.getpgid(process.pid) == process.pid  # its own session and process group

        def server_info():
            assert process.poll() is None, log.read_text(errors="replace")[-4000:]
            try:
                with urllib.request.urlopen(f"{base}/server_info", timeout=5) as response:
                    return json.load(response)
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                return None

        info = _wait("/server_info", 120, server_info, log)
        assert "dagster_webserver_version" in info

        selector = {"repositoryLocationName": LOCATION, "repositoryName": REPOSITORY}

        def repository():
            data = _graphql(base, REPOSITORY_QUERY, {"selector": selector})["repositoryOrError"]
            return data if data["__typename"] == "Repository" else None

        repo = _wait("the code location to load", 120, repository, log)
        assert {
            "full_lineage",
            "retrain",
            "partition_lineage",
            "shared_inputs",
            "experiment_grid",
        } <= {j["name"] for j in repo["jobs"]}
        schedules = {s["name"]: s for s in repo["schedules"]}
        assert schedules["weekly_retrain"]["cronSchedule"] == "0 3 * * 0"
        assert schedules["weekly_retrain"]["executionTimezone"] == "UTC"
        assert schedules["weekly_retrain"]["scheduleState"]["status"] == "STOPPED"
        sensors = {s["name"]: s["sensorState"]["status"] for s in repo["sensors"]}
        assert sensors == {
            "raw_input_changed": "STOPPED",
            "full_lineage_fan_out": "RUNNING",
            "default_cell_after_partition": "RUNNING",
            "cross_dataset_after_partitions": "RUNNING",
        }

        nodes = _graphql(base, ASSETS_QUERY)["assetNodes"]
        keys = {"/".join(n["assetKey"]["path"]) for n in nodes}
        assert {"raw_tjh", "raw_mimic_iv", "cohort_dataset", "expert_model"} <= keys
        checks = {
            check["name"]
            for n in nodes
            if n["assetChecksOrError"]["__typename"] == "AssetChecks"
            for check in n["assetChecksOrError"]["checks"]
        }
        assert "cohort_quality" in checks

        # The grid's two dimensions, as the UI shows them on the cell assets.
        for node in _graphql(base, GRID_QUERY)["assetNodes"]:
            dimensions = {d["name"]: d["partitionKeys"] for d in node["partitionKeysByDimension"]}
            assert dimensions["dataset_task"] == list(COHORTS), node
            assert dimensions["variant"] == list(VARIANTS), node

        launched = _graphql(
            base,
            LAUNCH_MUTATION,
            {
                "executionParams": {
                    "selector": {
                        **selector,
                        "jobName": "__ASSET_JOB",
                        "assetSelection": [{"path": ["raw_tjh"]}],
                    },
                    "mode": "default",
                }
            },
        )["launchRun"]
        assert launched["__typename"] == "LaunchRunSuccess", launched
        run_id = launched["run"]["runId"]

        def finished():
            run = _graphql(base, RUN_QUERY, {"runId": run_id})["runOrError"]
            assert run["__typename"] == "Run", run
            return run["status"] if run["status"] in ("SUCCESS", "FAILURE", "CANCELED") else None

        assert _wait(f"run {run_id}", 180, finished, log) == "SUCCESS"
        assert list((tmp_path / "eagrl_home").rglob("raw_tjh/**/lab_reports.parquet"))

        # A backfill of a sub-grid (two variants of tjh-mortality): one run per cell (after the
        # cheap run, so they do not compete for the CPU; their outcome is not the point here).
        cells = ["tjh-mortality|vanilla", "tjh-mortality|decomposition"]
        backfill = _graphql(
            base,
            BACKFILL_MUTATION,
            {
                "params": {
                    "selector": {
                        "partitionSetName": "experiment_grid_partition_set",
                        "repositorySelector": selector,
                    },
                    "partitionNames": cells,
                    "forceSynchronousSubmission": True,
                }
            },
        )["launchPartitionBackfill"]
        assert backfill["__typename"] == "LaunchBackfillSuccess", backfill
        assert len(backfill["launchedRunIds"]) == len(cells)
        launched_cells = []
        for run_id in backfill["launchedRunIds"]:
            tags = _graphql(base, RUN_TAGS_QUERY, {"runId": run_id})["runOrError"]["tags"]
            tags = {t["key"]: t["value"] for t in tags}
            assert tags["dagster/backfill"] == backfill["backfillId"]
            launched_cells.append(tags["dagster/partition"])
        assert sorted(launched_cells) == sorted(cells)

    finally:
        _stop_group(process)
    assert process.poll() is not None

    _wait("the process group to exit", 30, lambda: not _group_alive(process.pid), log)
