"""Raw inputs: validated, typed parquet snapshots. Their data version hashes the input's
fingerprint with the reader's code version and the settings that shape the snapshot."""

import json
from collections.abc import Callable
from pathlib import Path

import pandas as pd
from dagster import AssetExecutionContext, MaterializeResult, MetadataValue, asset

from assets.versioning import versioned
from eagrl_pipeline.data import mimic_iv
from eagrl_pipeline.data.synthetic_mimic_iv import write_synthetic_mimic_iv
from eagrl_pipeline.data.synthetic_tjh import write_synthetic_tjh
from eagrl_pipeline.data.tjh import read_tjh, write_tjh_snapshot
from eagrl_pipeline.paths import atomic_path
from resources import DBT_PROJECT, EagrlHome, EhrSources

SEEDS_DIR = DBT_PROJECT.project_dir / "seeds"


MARKER = "synthetic.json"


def _synthetic(folder: Path, params: dict[str, object], write: Callable[[Path], object]) -> Path:
    """Generate a synthetic dataset once per parameter set (a marker file records them).

    All or nothing: ``write`` fills a temporary folder, the marker is written last, and the
    folder replaces the old one in one swap, so an interrupted generation is never taken for a
    complete one.
    """
    marker = folder / MARKER
    try:
        if json.loads(marker.read_text()) == params:
            return folder
    except (OSError, ValueError):
        pass
    with atomic_path(folder) as staged:
        staged.mkdir()
        write(staged)
        (staged / MARKER).write_text(json.dumps(params))
    return folder


@asset(
    group_name="raw",
    kinds={"python", "parquet"},
    pool="duckdb",  # dbt reads these snapshots: never replace them during a build
)
def raw_tjh(context: AssetExecutionContext, home: EagrlHome, sources: EhrSources):
    """TJH COVID-19 lab reports: the configured xlsx/csv, or a synthetic file in its format."""
    if sources.tjh_path:
        path = Path(sources.tjh_path).expanduser()
        origin = "configured"
    else:
        folder = home.synthetic / "tjh"
        name = "time_series_375_prerpocess_en.xlsx"
        path = folder / name
        params = {"n_patients": sources.synthetic_tjh_patients, "seed": sources.synthetic_seed}
        _synthetic(folder, params, lambda staged: write_synthetic_tjh(staged / name, **params))
        origin = "synthetic"
    table = read_tjh(path)
    fingerprint = mimic_iv.fingerprint_files([path])
    target = write_tjh_snapshot(table, home.raw_dir("raw_tjh") / "lab_reports.parquet")
    dated = table.dropna(subset=["re_date"])
    context.log.info(f"raw_tjh: {len(table)} rows from {path} -> {target}")
    result = MaterializeResult(
        metadata={
            "source": origin,
            "input_path": MetadataValue.path(str(path)),
            "snapshot": MetadataValue.path(str(target)),
            "fingerprint": fingerprint,
            "rows": len(table),
            "rows_without_re_date": int(table["re_date"].isna().sum()),
            "patients": int(table["patient_id"].nunique()),
            "patients_with_reports": int(dated["patient_id"].nunique()),
        },
    )
    return versioned(context, result, fingerprint=fingerprint)


def _item_ids(seed: str) -> list[int]:
    return pd.read_csv(SEEDS_DIR / seed)["itemid"].astype(int).tolist()


@asset(
    group_name="raw",
    kinds={"python", "duckdb", "parquet"},
    pool="duckdb",  # dbt reads these snapshots: never replace them during a build
)
def raw_mimic_iv(context: AssetExecutionContext, home: EagrlHome, sources: EhrSources):
    """MIMIC-IV hosp/ + icu/ tables: the configured folder, or a synthetic one in its layout."""
    if sources.mimic_iv_root:
        root = Path(sources.mimic_iv_root).expanduser()
        origin = "configured"
    else:
        root = home.synthetic / "mimic_iv"
        params = {"n_stays": sources.synthetic_mimic_iv_stays, "seed": sources.synthetic_seed}
        _synthetic(root, params, lambda staged: write_synthetic_mimic_iv(staged, **params))
        origin = "synthetic"
    paths = mimic_iv.check_layout(root, sources.mimic_iv_feature_set)
    fingerprint = mimic_iv.fingerprint_files(paths.values(), root)
    settings = {
        "feature_set": sources.mimic_iv_feature_set,
        "chart_itemids": _item_ids("mimic_iv_chart_items.csv"),
        "lab_itemids": _item_ids("mimic_iv_lab_items.csv"),
    }
    counts = mimic_iv.snapshot_mimic_iv(root, home.raw_dir("raw_mimic_iv"), **settings)
    context.log.info(f"raw_mimic_iv: snapshot of {root}: {counts}")
    result = MaterializeResult(
        metadata={
            "source": origin,
            "input_path": MetadataValue.path(str(root)),
            "snapshot": MetadataValue.path(str(home.raw_dir("raw_mimic_iv"))),
            "feature_set": sources.mimic_iv_feature_set,
            "fingerprint": fingerprint,
            **{f"rows_{table}": n for table, n in counts.items()},
        },
    )
    return versioned(context, result, fingerprint=fingerprint, **settings)
