"""`make run`: materialize the whole lineage that exists, on the embedded default, then say
where everything is. Runs go to the persistent Dagster instance, so `make dev` shows them."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from dagster import DagsterInstance

from assets.partitions import COHORTS
from definitions import EAGRL_HOME, defs


def main() -> int:
    instance = DagsterInstance.get()
    started = time.monotonic()
    failed: list[str] = []
    result = defs.get_job_def("build_warehouse").execute_in_process(
        instance=instance, raise_on_error=False
    )
    if not result.success:
        print("The warehouse build failed; see the Dagster logs above.", file=sys.stderr)
        return 1
    for partition in COHORTS:
        result = defs.get_job_def("partition_lineage").execute_in_process(
            instance=instance, partition_key=partition, raise_on_error=False
        )
        checks = [evaluation for evaluation in result.get_asset_check_evaluations()]
        if not result.success or not all(c.passed for c in checks):
            failed.append(partition)
    elapsed = time.monotonic() - started

    home = Path(EAGRL_HOME)
    print("\n== eagrl-pipeline: lineage materialized ==")
    print(
        f"{'partition':<22}{'train':>8}{'val':>6}{'test':>6}{'prev(test)':>12}{'visits':>9}  checks"
    )
    for partition in COHORTS:
        manifest_path = home / "artifacts" / "cohort_dataset" / partition / "manifest.json"
        if not manifest_path.exists():
            print(f"{partition:<22}  (not built)")
            continue
        manifest = json.loads(manifest_path.read_text())
        summary = manifest["summary"]
        status = "FAILED" if partition in failed else "passed"
        print(
            f"{partition:<22}{summary['train']['patients']:>8}{summary['val']['patients']:>6}"
            f"{summary['test']['patients']:>6}{summary['test']['prevalence']:>12.3f}"
            f"{summary['visits']:>9}  {status}"
        )
    print(f"\nwarehouse (DuckDB): {home / 'warehouse.duckdb'}")
    print(f"cohorts:            {home / 'artifacts' / 'cohort_dataset'}/<partition>/")
    print(f"raw snapshots:      {home / 'artifacts'}/raw_tjh, raw_mimic_iv")
    print(f"Dagster instance:   {instance.root_directory}  (make dev opens the UI)")
    print(f"wall time: {elapsed:.1f} s")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
