"""What an asset's version covers: the source it runs and the settings it ran with.

Dagster calls an asset stale when its code version or an input's data version changed since it
was materialized. Two gaps make that blind in practice, and this module closes them:

- **Code versions are derived, not typed.** :func:`source_version` hashes the source an asset
  runs: its function with its decorator, the module-level helpers and config classes it reaches
  (transitively), and every project module (``eagrl_pipeline``, ``assets``, ``resources``) those
  import, each resolved to the module that defines the imported name. A change to a stage's code,
  or to the method code under it, changes that stage's version and so marks it and what follows
  stale; a change to another stage's helpers does not. Library upgrades are not covered (pin
  them). dbt models keep dagster-dbt's own versions (a hash of the model's SQL).
  A table of per-partition settings (the method variants of ``eagrl_pipeline/variants.py``) is
  left out of the code version: each grid cell covers its own entry through its fingerprint.
- **A data version covers the config.** Dagster's default data version hashes the code version
  and the inputs' versions, so an asset re-materialized with other launchpad config reports the
  same version and its children stay "fresh" against the old output. :func:`versioned` adds the
  fingerprint of the asset's resolved config (and of the resource settings that shape its
  content) to that hash, and records the fingerprint as metadata, so ``make run``'s planner
  (``staleness.py``) can also compare it with the config it is about to run.
"""

from __future__ import annotations

import ast
import functools
import hashlib
import importlib
import importlib.util
import inspect
import json
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from dagster import (
    AssetExecutionContext,
    AssetKey,
    AssetsDefinition,
    DagsterInstance,
    DataVersion,
    MaterializeResult,
    MetadataValue,
)
from dagster._core.definitions.data_version import DATA_VERSION_TAG

from assets.partitions import parent_partitions

PROJECT_PACKAGES = ("eagrl_pipeline", "assets", "resources")
CONFIG_FINGERPRINT = "config_fingerprint"


def latest_metadata(
    instance: DagsterInstance, key: AssetKey, partition: str | None, name: str
) -> tuple[str | None, Any]:
    """(run id, metadata value ``name``) of ``key``'s (partition's) latest materialization;
    (None, None) when there is none."""
    record = instance.get_latest_data_version_record(key, partition_key=partition)
    event = record.asset_materialization if record else None
    if event is None:
        return None, None
    value = (event.metadata or {}).get(name)
    return record.run_id, getattr(value, "value", value)


def _is_project(module: str) -> bool:
    return module.split(".")[0] in PROJECT_PACKAGES


@functools.cache
def _parsed(module: str) -> tuple[str, ast.Module]:
    spec = importlib.util.find_spec(module)
    if spec is None or spec.origin is None:
        raise ValueError(f"source_version: cannot find the source of module {module!r}")
    source = Path(spec.origin).read_text(encoding="utf-8")
    return source, ast.parse(source)


def _defining_module(package: str, name: str) -> str:
    """The module that defines ``name`` as imported from ``package`` (a submodule, or the module
    a re-exported class or function comes from, or ``package`` itself)."""
    imported = importlib.import_module(package)
    if hasattr(imported, "__path__") and importlib.util.find_spec(f"{package}.{name}"):
        return f"{package}.{name}"
    value = getattr(imported, name, None)
    owner = (
        getattr(value, "__module__", None) if inspect.isclass(value) or callable(value) else None
    )
    return owner if isinstance(owner, str) and _is_project(owner) else package


def _imports(tree: ast.AST) -> dict[str, str]:
    """Local name -> project module it refers to, for every import anywhere in ``tree``."""
    names: dict[str, str] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and _is_project(node.module):
            for alias in node.names:
                names[alias.asname or alias.name] = _defining_module(node.module, alias.name)
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if _is_project(alias.name):
                    names[alias.asname or alias.name.split(".")[0]] = alias.name
    return names


def _module_closure(modules: Iterable[str]) -> list[str]:
    """``modules`` and every project module they import, transitively."""
    todo, seen = list(modules), set()
    while todo:
        module = todo.pop()
        if module in seen:
            continue
        seen.add(module)
        todo += [m for m in set(_imports(_parsed(module)[1]).values()) if m not in seen]
    return sorted(seen)


def _top_level(tree: ast.Module) -> dict[str, ast.stmt]:
    defs: dict[str, ast.stmt] = {}
    for node in tree.body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            defs[node.name] = node
        elif isinstance(node, ast.Assign | ast.AnnAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for target in targets:
                for name in ast.walk(target):
                    if isinstance(name, ast.Name):
                        defs[name.id] = node
    return defs


def _segment(source: str, node: ast.stmt) -> str:
    decorators = getattr(node, "decorator_list", [])
    return "\n".join([*(ast.unparse(d) for d in decorators), ast.get_source_segment(source, node)])


@functools.cache
def source_version(fn: Callable[..., Any]) -> str:
    """A 16-hex hash of the source ``fn`` runs (see the module docstring)."""
    module = fn.__module__
    source, tree = _parsed(module)
    top, imported = _top_level(tree), _imports(tree)
    if fn.__name__ not in top:
        raise ValueError(f"source_version: {module}.{fn.__name__} is not a top-level definition")
    reached, modules, todo = {fn.__name__}, set(), [top[fn.__name__]]
    while todo:
        node = todo.pop()
        for name in (n.id for n in ast.walk(node) if isinstance(n, ast.Name)):
            if name in top and name not in reached:
                reached.add(name)
                todo.append(top[name])
            elif name in imported:
                modules.add(imported[name])
        modules |= set(_imports(node).values())
    digest = hashlib.sha256()
    for node in sorted({id(top[n]): top[n] for n in reached}.values(), key=lambda n: n.lineno):
        digest.update(_segment(source, node).encode())
    for dependency in _module_closure(modules):
        digest.update(f"\0{dependency}\0".encode() + _module_source(dependency).encode())
    return digest.hexdigest()[:16]


# Tables of per-partition settings: module -> top-level names left out of the code version.
# Each grid cell records its own entry in its config fingerprint (``versioned(...,
# variant=...)``), so editing one variant makes that variant's cells stale, not every cell.
PARTITION_SETTINGS = {"eagrl_pipeline.variants": frozenset({"_VARIANTS"})}


def _module_source(module: str) -> str:
    """A module's source as its code version sees it (without its per-partition tables)."""
    source, tree = _parsed(module)
    tables = PARTITION_SETTINGS.get(module)
    if not tables:
        return source
    kept = [node for name, node in _top_level(tree).items() if name not in tables]
    body = [node for node in tree.body if node in kept or not _defines(node)]
    return ast.unparse(ast.Module(body=body, type_ignores=[]))


def _defines(node: ast.stmt) -> bool:
    return isinstance(
        node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef | ast.Assign | ast.AnnAssign
    )


def with_source_versions(assets: Iterable[Any]) -> list[Any]:
    """``assets`` with a derived code version on every Python asset that has none (the dbt
    assets keep dagster-dbt's per-model SQL hashes)."""
    out = []
    for definition in assets:
        if (
            not isinstance(definition, AssetsDefinition)
            or not definition.is_executable
            or any(spec.code_version for spec in definition.specs)
        ):
            out.append(definition)
            continue
        version = source_version(definition.op.compute_fn.decorated_fn)
        out.append(
            definition.map_asset_specs(
                lambda spec, v=version: spec.replace_attributes(code_version=v)
            )
        )
    return out


def _plain(value: Any) -> Any:
    if hasattr(value, "model_dump"):
        return value.model_dump(mode="json")
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def config_fingerprint(config: Any = None, **settings: Any) -> str:
    """A stable 16-hex hash of an asset's resolved config (a Dagster ``Config``, a mapping or
    None) and of the resource ``settings`` that shape its content."""
    payload = {"config": _plain(config), "settings": _plain(settings)}
    text = json.dumps(payload, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _input_versions(context: AssetExecutionContext) -> dict[str, str]:
    """The data version of each parent this materialization reads (the same partition of a
    partitioned parent), as Dagster records them in the provenance."""
    layer = context.job_def.asset_layer
    versions = {}
    for parent in sorted(layer.get(context.asset_key).parent_keys):
        partitions = parent_partitions(context, parent)
        for partition in partitions:
            record = context.instance.get_latest_data_version_record(
                parent, partition_key=partition
            )
            materialization = record.asset_materialization if record else None
            tags = (materialization.tags if materialization else None) or {}
            name = parent.to_user_string()
            versions[name if len(partitions) == 1 else f"{name}[{partition}]"] = tags.get(
                DATA_VERSION_TAG, ""
            )
    return versions


def versioned(
    context: AssetExecutionContext,
    result: MaterializeResult,
    config: Any = None,
    **settings: Any,
) -> MaterializeResult:
    """``result`` with a data version over the code version, the inputs' data versions and the
    config fingerprint, and the fingerprint as metadata (``config_fingerprint``)."""
    fingerprint = config_fingerprint(config, **settings)
    code_version = context.assets_def.code_versions_by_key.get(context.asset_key) or ""
    payload = json.dumps(
        {"code": code_version, "config": fingerprint, "inputs": _input_versions(context)},
        sort_keys=True,
    )
    version = hashlib.sha256(payload.encode()).hexdigest()[:24]
    metadata = {**(result.metadata or {}), CONFIG_FINGERPRINT: MetadataValue.text(fingerprint)}
    return MaterializeResult(
        asset_key=result.asset_key,
        metadata=metadata,
        check_results=result.check_results,
        data_version=DataVersion(version),
        tags=result.tags,
    )
