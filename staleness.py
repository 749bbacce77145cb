"""Which assets need materializing: the ones Dagster's data versions call missing or stale,
and everything downstream of those. Code versions on the assets plus data versions from the
raw inputs' fingerprints make this exact: a re-run with nothing changed finds nothing to do.

Two refinements over Dagster's own status: staleness is carried down the graph (Dagster only
flags the direct children of a changed asset until they are re-materialized), and a
dependency can be declared irrelevant to a partition (``cohort_dataset[tjh-mortality]`` lists
every cohort mart as a dependency, but reads only the TJH one), so a change to one dataset never
retrains the others.

The raw assets are the roots: they run every time to fingerprint their inputs, and a raw run
that finds the same fingerprint reports the same data version, so nothing below turns stale.

Config and model: Dagster's status knows neither. ``planned_fingerprints`` hashes the config each
asset is about to run with (the job's run config resolved against the asset's Config class, and
for ``base_language_model`` the model folder's fingerprint and the llm/compute settings), and
``stale_or_missing`` calls an asset whose last materialization recorded another fingerprint
(``assets/versioning.py``) "config changed" (the experts: "config or training device changed";
the model: "model or settings changed").
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from dagster import (
    AssetKey,
    AssetsDefinition,
    DagsterInstance,
    Definitions,
    MultiPartitionsDefinition,
)
from dagster._core.definitions.data_version import CachingStaleStatusResolver, StaleStatus
from dagster._core.definitions.temporal_context import TemporalContext
from dagster._time import get_current_datetime

from assets.partitions import split_cell

Relevance = Callable[[AssetKey, str | None, AssetKey], bool]


def _always(child: AssetKey, partition: str | None, parent: AssetKey) -> bool:
    return True


def job_asset_keys(defs: Definitions, job_name: str) -> list[AssetKey]:
    """The assets a job materializes (checks excluded)."""
    job = defs.resolve_job_def(job_name)
    return sorted(job.asset_layer.selected_asset_keys, key=lambda k: k.to_user_string())


def stale_or_missing(
    instance: DagsterInstance,
    defs: Definitions,
    keys: Iterable[AssetKey],
    partition_key: str | None = None,
    relevant: Relevance = _always,
    planned: Mapping[AssetKey, str | Mapping[str, str]] | None = None,
) -> dict[AssetKey, str]:
    """Assets of ``keys`` to materialize for ``partition_key`` (unpartitioned assets ignore
    it), each with the reason: ``missing``, Dagster's stale causes, a changed upstream, or a
    config fingerprint in ``planned`` other than the one the last materialization recorded."""
    from dagster._core.asset_graph_view.asset_graph_view import AssetGraphView

    wanted = set(keys)
    graph = defs.resolve_asset_graph()
    view = AssetGraphView(
        temporal_context=TemporalContext(effective_dt=get_current_datetime(), last_event_id=None),
        instance=instance,
        asset_graph=graph,
    )
    resolver = CachingStaleStatusResolver(instance, graph, loading_context=view)
    todo: dict[AssetKey, str] = {}
    for key in graph.toposorted_asset_keys:
        node = graph.get(key)
        if not node.is_materializable or (node.is_partitioned and partition_key is None):
            continue
        partition = _node_partition(node.partitions_def, partition_key)
        if node.is_partitioned and partition is None:
            continue  # a grid cell's asset, planned with a cell key
        status = resolver.get_status(key, partition)
        if status == StaleStatus.MISSING:
            todo[key] = "missing"
            continue
        changed = sorted(
            p.to_user_string()
            for p in node.parent_keys
            if p in todo and relevant(key, partition_key, p)
        )
        if changed:
            todo[key] = "upstream re-materialized: " + ", ".join(changed)
        elif status == StaleStatus.STALE:
            causes = [
                cause
                for cause in resolver.get_stale_causes(key, partition)
                if cause.dependency is None
                or relevant(key, partition_key, cause.dependency.asset_key)
            ]
            if causes:
                todo[key] = "; ".join(sorted({c.reason for c in causes}))
        if key not in todo and planned and key in planned:
            expected = planned[key]
            if isinstance(expected, Mapping):  # a grid cell's: one fingerprint per cell
                expected = expected.get(str(partition))
            recorded = recorded_fingerprint(instance, key, partition)
            if recorded != expected:
                todo[key] = _changed(key)
    return {key: why for key, why in todo.items() if key in wanted}


def _node_partition(partitions_def: Any, partition_key: str | None) -> str | None:
    """The partition of an asset that a plan for ``partition_key`` covers: its own key where the
    asset has it (a dataset-task, a grid cell ``tjh-mortality|eagrl``, a variant), a grid cell's
    dataset-task for a dataset-task stage; None (not in this plan) otherwise, such as a grid
    cell's asset in a plan for a dataset-task."""
    if partitions_def is None or partition_key is None:
        return None
    key = str(partition_key)
    keys = {str(k) for k in partitions_def.get_partition_keys()}
    if key in keys:
        return key
    if "|" in key and split_cell(key)[0] in keys:
        return split_cell(key)[0]
    return None


MODEL = AssetKey("base_language_model")
EXPERTS = frozenset({AssetKey("expert_model"), AssetKey("expert_feature_ranking")})  # compute-aware
RL = AssetKey("rl_checkpoint")


def _changed(key: AssetKey) -> str:
    """The reason for a fingerprint change, naming everything the fingerprint covers."""
    if key == MODEL:
        return "model or settings changed"
    if key in EXPERTS:
        return "config or training device changed"
    return "config changed"


def recorded_fingerprint(
    instance: DagsterInstance, key: AssetKey, partition: str | None
) -> str | None:
    """The config fingerprint of ``key``'s (partition's) latest materialization, if any."""
    from assets.versioning import CONFIG_FINGERPRINT, latest_metadata

    return latest_metadata(instance, key, partition, CONFIG_FINGERPRINT)[1]


def _config_class(definition: AssetsDefinition) -> type | None:
    parameter = inspect.signature(definition.op.compute_fn.decorated_fn).parameters.get("config")
    annotation = parameter.annotation if parameter else None
    if isinstance(annotation, str):  # postponed annotations
        module = inspect.getmodule(definition.op.compute_fn.decorated_fn)
        annotation = getattr(module, annotation, None)
    return annotation if isinstance(annotation, type) else None


def planned_fingerprints(
    defs: Definitions,
    run_config: Mapping[str, Any] | None,
    home: str | Path,
    resources: Mapping[str, Any] | None = None,
) -> dict[AssetKey, str | dict[str, str]]:
    """The config fingerprint each Python asset will record when run with ``run_config`` (the
    ``ops`` and ``resources`` sections of a job's run config, as the profiles hold them) and
    ``resources`` (``defs``' own by default)."""
    from assets.versioning import config_fingerprint

    run_config = run_config or {}
    ops = run_config.get("ops") or {}
    overrides = run_config.get("resources") or {}
    graph = defs.resolve_asset_graph()
    llm = _resource(resources or defs.resources, "llm", overrides)
    compute = _resource(resources or defs.resources, "compute", overrides)
    planned: dict[AssetKey, str | dict[str, str]] = {}
    for key in graph.get_all_asset_keys():
        definition = defs.resolve_assets_def(key)
        if not definition.is_executable or key not in definition.keys or len(definition.keys) > 1:
            continue
        if key == MODEL:
            settings = llm.version_settings(llm.planned_model_dir(Path(home)), compute)
            planned[key] = config_fingerprint(None, **settings)
            continue
        config_class = _config_class(definition)
        if config_class is None:
            continue
        raw = (ops.get(definition.op.name) or {}).get("config") or {}
        if _per_variant(definition.partitions_def):
            planned[key] = _cell_fingerprints(
                key, config_class(**raw), set(raw), definition.partitions_def
            )
            continue
        settings = {"compute": compute.expert_version_settings()} if key in EXPERTS else {}
        planned[key] = config_fingerprint(config_class(**raw), **settings)
    return planned


def _per_variant(partitions_def: Any) -> bool:
    """Partitioned by method variant: the grid's cells, or a variant alone."""
    from assets.partitions import variant_partitions

    return isinstance(partitions_def, MultiPartitionsDefinition) or (
        partitions_def is not None
        and set(partitions_def.get_partition_keys()) == set(variant_partitions.get_partition_keys())
    )


def _cell_fingerprints(
    key: AssetKey, config: Any, given: set[str], partitions_def: Any
) -> dict[str, str]:
    """Per grid cell (or variant): the fingerprint the partition records, over the config it
    runs with (for rl_checkpoint, the run config with the variant's fixed settings applied;
    none for a variant without GRPO) and the variant's settings."""
    from assets.training import rl_config_for_variant
    from assets.versioning import config_fingerprint
    from eagrl_pipeline.variants import get_variant

    out = {}
    for cell in partitions_def.get_partition_keys():
        variant = get_variant(split_cell(cell)[1] if "|" in str(cell) else str(cell))
        cell_config = rl_config_for_variant(config, variant, given) if key == RL else config
        out[str(cell)] = config_fingerprint(cell_config, variant=variant.settings())
    return out


def _resource(resources: Mapping[str, Any], name: str, overrides: Mapping[str, Any]) -> Any:
    """Resource ``name`` with the run config's ``resources.<name>.config`` applied."""
    resource = resources[name]
    update = (overrides.get(name) or {}).get("config") or {}
    if not update:
        return resource
    fields = {field: getattr(resource, field) for field in type(resource).model_fields}
    return type(resource)(**{**fields, **update})


def cohort_relevance(child: AssetKey, partition: str | None, parent: AssetKey) -> bool:
    """A partition of ``cohort_dataset`` reads only its own dataset's mart."""
    from assets.partitions import COHORTS, cohort_mart

    marts = {AssetKey(cohort_mart(key)) for key in COHORTS}
    if partition is None or parent not in marts:
        return True
    return parent == AssetKey(cohort_mart(partition))
