"""Raw inputs: validated, typed parquet snapshots. Their data version hashes the input's content
fingerprint with the reader's code version and the settings that shape the snapshot; a run whose
input files have the names, sizes and mtimes of the last snapshot reads nothing
(``eagrl_pipeline.data.fingerprints``)."""

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
from dagster import AssetExecutionContext, MaterializeResult, MetadataValue, asset
from dagster._core.definitions.data_version import CODE_VERSION_TAG

from assets.versioning import CONFIG_FINGERPRINT, config_fingerprint, versioned
from eagrl_pipeline.data import mimic_iv
from eagrl_pipeline.data.fingerprints import content_fingerprint, stat_fingerprint
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


@dataclass(frozen=True)
class _Previous:
    """What the last materialization recorded, when it can stand for this one: same settings,
    same reader code, and its snapshot still on disk."""

    stat: str
    content: str
    metadata: dict[str, Any]


def _previous(
    context: AssetExecutionContext, settings_fingerprint: str, snapshot: Path
) -> _Previous | None:
    event = context.instance.get_latest_materialization_event(context.asset_key)
    materialization = event.asset_materialization if event else None
    if materialization is None or not snapshot.exists():
        return None
    meta = materialization.metadata or {}
    value = lambda key: getattr(meta.get(key), "value", meta.get(key))  # noqa: E731
    code_version = context.assets_def.code_versions_by_key.get(context.asset_key)
    if (
        value("settings_fingerprint") != settings_fingerprint
        or (materialization.tags or {}).get(CODE_VERSION_TAG) != code_version
        or not value("stat_fingerprint")
        or not value("fingerprint")
    ):
        return None
    kept = {k: v for k, v in meta.items() if k not in (CONFIG_FINGERPRINT, "snapshot_reused")}
    return _Previous(value("stat_fingerprint"), value("fingerprint"), kept)


def _snapshot(
    context: AssetExecutionContext,
    files: list[Path],
    root: Path | None,
    snapshot: Path,
    settings: dict[str, Any],
    write: Callable[[], dict[str, Any]],
    described: dict[str, Any],
) -> MaterializeResult:
    """Snapshot ``files`` with ``write`` (which returns what it counted) unless the last snapshot
    read the same files: same names, sizes and mtimes (nothing is read then), or the same bytes
    (read once, to hash). Either way the data version hashes the content fingerprint, the reader's
    code version and ``settings``, so an unchanged input marks nothing below it stale."""
    settings_fingerprint = config_fingerprint(None, **settings)
    stat = stat_fingerprint(files)
    previous = _previous(context, settings_fingerprint, snapshot)
    if previous and previous.stat == stat:
        context.log.info(
            f"{context.asset_key.to_user_string()}: inputs unchanged (names, sizes, "
            "mtimes); the snapshot is kept and nothing was read"
        )
        content, metadata, reused = previous.content, previous.metadata, "unchanged files"
    else:
        content = content_fingerprint(files, root)
        if previous and previous.content == content:
            metadata, reused = previous.metadata, "same contents"
        else:
            metadata, reused = write(), "no"
    metadata = {
        **metadata,
        **described,  # where the input is now (a reused snapshot may have been read elsewhere)
        "fingerprint": content,
        "stat_fingerprint": stat,
        "settings_fingerprint": settings_fingerprint,
        "snapshot_reused": reused,
    }
    return versioned(context, MaterializeResult(metadata=metadata), fingerprint=content, **settings)


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
    target = home.raw_dir("raw_tjh") / "lab_reports.parquet"

    def write() -> dict[str, Any]:
        table = read_tjh(path)
        write_tjh_snapshot(table, target)
        dated = table.dropna(subset=["re_date"])
        context.log.info(f"raw_tjh: {len(table)} rows from {path} -> {target}")
        return {
            "rows": len(table),
            "rows_without_re_date": int(table["re_date"].isna().sum()),
            "patients": int(table["patient_id"].nunique()),
            "patients_with_reports": int(dated["patient_id"].nunique()),
        }

    described = {
        "source": origin,
        "input_path": MetadataValue.path(str(path)),
        "snapshot": MetadataValue.path(str(target)),
    }
    return _snapshot(context, [path], None, target, {"source": origin}, write, described)


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
    settings = {
        "source": origin,
        "feature_set": sources.mimic_iv_feature_set,
        "chart_itemids": _item_ids("mimic_iv_chart_items.csv"),
        "lab_itemids": _item_ids("mimic_iv_lab_items.csv"),
    }
    target = home.raw_dir("raw_mimic_iv")

    def write() -> dict[str, Any]:
        snapshot_settings = {k: v for k, v in settings.items() if k != "source"}
        counts = mimic_iv.snapshot_mimic_iv(root, target, **snapshot_settings)
        context.log.info(f"raw_mimic_iv: snapshot of {root}: {counts}")
        return {f"rows_{table}": n for table, n in counts.items()}

    described = {
        "source": origin,
        "input_path": MetadataValue.path(str(root)),
        "snapshot": MetadataValue.path(str(target)),
        "feature_set": sources.mimic_iv_feature_set,
    }
    return _snapshot(context, list(paths.values()), root, target, settings, write, described)
