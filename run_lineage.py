"""`make run`: materialize the whole lineage that exists, on the embedded default, then say
where everything is. Runs go to the persistent Dagster instance, so `make dev` shows them."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import pandas as pd
from dagster import DagsterInstance

from assets.partitions import COHORTS
from definitions import EAGRL_HOME, defs


def _read_json(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.exists() else None


def main() -> int:
    instance = DagsterInstance.get()
    started = time.monotonic()
    failed: dict[str, list[str]] = {}
    result = defs.get_job_def("shared_inputs").execute_in_process(
        instance=instance, raise_on_error=False
    )
    if not result.success:
        print("The warehouse build failed; see the Dagster logs above.", file=sys.stderr)
        return 1
    for partition in COHORTS:
        result = defs.get_job_def("partition_lineage").execute_in_process(
            instance=instance, partition_key=partition, raise_on_error=False
        )
        bad = [c.check_name for c in result.get_asset_check_evaluations() if not c.passed]
        if not result.success or bad:
            failed[partition] = bad or ["run failed"]
    elapsed = time.monotonic() - started

    artifacts = Path(EAGRL_HOME) / "artifacts"
    print("\n== eagrl-pipeline: lineage materialized ==")
    header = ("partition", "train", "val", "test", "prev", "expert", "test AUROC", "test AUPRC")
    print("{:<22}{:>7}{:>5}{:>6}{:>7}  {:<9}{:>17}{:>17}  base LLM parsed  checks".format(*header))
    for partition in COHORTS:
        cohort = _read_json(artifacts / "cohort_dataset" / partition / "manifest.json")
        expert = _read_json(artifacts / "expert_model" / partition / "manifest.json")
        if cohort is None:
            print(f"{partition:<22}  (not built)")
            continue
        s = cohort["summary"]
        line = (
            f"{partition:<22}{s['train']['patients']:>7}{s['val']['patients']:>5}"
            f"{s['test']['patients']:>6}{s['test']['prevalence']:>7.3f}  "
        )
        if expert is not None:
            r = expert["models"][expert["primary"]]
            auroc, auprc = r["test_auroc"], r["test_auprc"]
            line += (
                f"{expert['primary']:<9}{auroc['mean']:>10.4f}±{auroc['std']:.4f}"
                f"{auprc['mean']:>10.4f}±{auprc['std']:.4f}"
            )
        else:
            line += f"{'-':<9}{'-':>17}{'-':>17}"
        predictions = artifacts / "base_llm_predictions" / partition / "predictions.parquet"
        if predictions.exists():
            valid = pd.read_parquet(predictions, columns=["valid"])["valid"]
            line += f"{f'{int(valid.sum())}/{len(valid)}':>17}"
        else:
            line += f"{'-':>17}"
        status = "FAILED: " + ", ".join(failed[partition]) if partition in failed else "passed"
        print(f"{line}  {status}")
    print(f"\nwarehouse (DuckDB):  {Path(EAGRL_HOME) / 'warehouse.duckdb'}")
    print(f"cohorts:             {artifacts / 'cohort_dataset'}/<partition>/")
    print(f"experts, rankings:   {artifacts}/expert_model|expert_feature_ranking/<partition>/")
    print(f"prompts, base LLM:   {artifacts}/llm_prompts|base_llm_predictions/<partition>/")
    print(f"MLflow store:        {Path(EAGRL_HOME) / 'mlflow'}  (make mlflow opens the UI)")
    print(f"Dagster instance:    {instance.root_directory}  (make dev opens the UI)")
    print(f"wall time: {elapsed:.1f} s")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
