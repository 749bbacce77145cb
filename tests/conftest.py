"""Shared fixtures: telemetry off, offline hub, real-data paths that skip when absent, and one
materialized lineage (synthetic default) in a temporary EAGRL_HOME for the integration tests."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

for _name, _value in {
    "HF_HUB_OFFLINE": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "DAGSTER_DISABLE_TELEMETRY": "1",
    "DBT_SEND_ANONYMOUS_USAGE_STATS": "false",
    "GX_ANALYTICS_ENABLED": "false",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "DO_NOT_TRACK": "1",
    "EAGRL_PROGRESS": "0",  # no progress bars in test logs
    # hypothesis keeps its example database and caches here, not in the working directory
    "HYPOTHESIS_STORAGE_DIRECTORY": str(Path(tempfile.gettempdir()) / "eagrl-hypothesis"),
}.items():
    os.environ.setdefault(_name, _value)

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
TJH_DIR = SHARED_DATA / "tjh"


@pytest.fixture
def probe_prompts():
    """24 patients (16 train, 4 val, 4 test), labels alternating, one LDH line each: the
    prompts table the answer probes (benchmarks/label_finetune.py, sft_probe.py) read."""
    import pandas as pd

    n = 24
    return pd.DataFrame(
        {
            "patient_id": range(n),
            "split": ["train"] * (n - 8) + ["val"] * 4 + ["test"] * 4,
            "label": [i % 2 for i in range(n)],
            "system": ["You are a doctor."] * n,
            "user": [f"- Lactate dehydrogenase: [{200 + 40 * (i % 2) + i}]" for i in range(n)],
            "features_shown": [["Lactate dehydrogenase"]] * n,
        }
    )


@pytest.fixture(scope="session")
def tjh_dir() -> Path:
    if not (TJH_DIR / "time_series_375_prerpocess_en.xlsx").exists():
        pytest.skip(f"real TJH data not present at {TJH_DIR} (only in the team's shared folder)")
    return TJH_DIR


@pytest.fixture(scope="session")
def lineage_home(tmp_path_factory: pytest.TempPathFactory):
    """raw -> warehouse -> the three cohorts, materialized once on small synthetic data."""
    from dagster import AssetSelection, DagsterInstance, materialize

    from assets.partitions import COHORTS
    from definitions import all_assets, build_resources
    from resources import EhrSources

    # A quote in the home path: it reaches dbt's SQL (sources) and must be escaped there.
    home = tmp_path_factory.mktemp("eagrl_home_o'brien")
    resources = build_resources(str(home))
    resources["sources"] = EhrSources(synthetic_tjh_patients=375, synthetic_mimic_iv_stays=600)
    instance = DagsterInstance.ephemeral()
    warehouse = materialize(
        all_assets,
        selection=AssetSelection.groups("raw", "warehouse"),
        resources=resources,
        instance=instance,
        raise_on_error=False,
    )
    cohorts = {
        key: materialize(
            all_assets,
            selection=AssetSelection.assets("cohort_dataset"),
            partition_key=key,
            resources=resources,
            instance=instance,
            raise_on_error=False,
        )
        for key in COHORTS
    }
    return {
        "home": home,
        "resources": resources,
        "instance": instance,
        "warehouse": warehouse,
        "cohorts": cohorts,
    }


EXPERT_PARTITION = "mimic_iv-mortality"
EXPERTS_RUN_CONFIG = {
    "ops": {
        "expert_model": {
            "config": {
                "models": ["gru", "concare"],
                "max_epochs": 2,
                "bootstrap_resamples": 50,
                "val_auroc_floor": 0.0,
            }
        },
        "expert_feature_ranking": {"config": {"aggregation": "mean_rank", "top_k": 3}},
    }
}


@pytest.fixture(scope="session")
def experts_run(lineage_home):
    """Two quick experts (GRU primary, ConCare) and a mean-rank ranking on one partition."""
    from dagster import AssetSelection, materialize

    from definitions import all_assets

    result = materialize(
        all_assets,
        selection=AssetSelection.assets("expert_model", "expert_feature_ranking"),
        partition_key=EXPERT_PARTITION,
        resources=lineage_home["resources"],
        instance=lineage_home["instance"],
        run_config=EXPERTS_RUN_CONFIG,
        raise_on_error=False,
    )
    return result, lineage_home
