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
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from dagster import AssetKey, DagsterInstance, Definitions
from dagster._core.definitions.data_version import CachingStaleStatusResolver, StaleStatus
from dagster._core.definitions.temporal_context import TemporalContext
from dagster._time import get_current_datetime

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
) -> dict[AssetKey, str]:
    """Assets of ``keys`` to materialize for ``partition_key`` (unpartitioned assets ignore
    it), each with the reason: ``missing``, Dagster's stale causes, or a changed upstream."""
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
        partition = partition_key if node.is_partitioned else None
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
    return {key: why for key, why in todo.items() if key in wanted}


def cohort_relevance(child: AssetKey, partition: str | None, parent: AssetKey) -> bool:
    """A partition of ``cohort_dataset`` reads only its own dataset's mart."""
    from assets.partitions import COHORTS, cohort_mart

    marts = {AssetKey(cohort_mart(key)) for key in COHORTS}
    if partition is None or parent not in marts:
        return True
    return parent == AssetKey(cohort_mart(partition))
