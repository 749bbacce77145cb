"""Measurement history: every benchmark appends its figures to ``benchmarks/results/<name>.json``.

Timings on a shared 2-core machine move by a fifth from run to run and by 2-3x between
sessions, so a figure is only comparable with the commit, the machine and the command that
produced it: :func:`record` stores those next to the figures, and keeps every earlier entry,
so the history lives in one JSON list per benchmark instead of in README prose.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import subprocess
import sys
from collections.abc import Mapping
from importlib import metadata
from pathlib import Path
from typing import Any

from eagrl_pipeline.paths import atomic_path

REPO = Path(__file__).resolve().parent.parent
RESULTS_DIR = REPO / "benchmarks" / "results"
# Flags that mean bf16 matmuls run in hardware (as eagrl_pipeline.llm.generation reads them,
# without importing torch here): bf16 timings are not comparable across machines without them.
BF16_FLAGS = ("amx_bf16", "avx512_bf16")
PROVENANCE_KEYS = ("date", "commit", "dirty", "machine", "torch", "command")


def _git(*args: str) -> str | None:
    """A git command's output in the repository, or None without git or outside a checkout."""
    try:
        done = subprocess.run(
            ["git", *args], cwd=REPO, capture_output=True, text=True, timeout=10, check=True
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip()


def _cpuinfo() -> tuple[str | None, set[str]]:
    """The CPU model name and flags from /proc/cpuinfo (Linux); (None, empty) elsewhere."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return None, set()
    model, flags = None, set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "model name" and model is None:
            model = value.strip()
        elif key.strip() == "flags" and not flags:
            flags = set(value.split())
    return model, flags


def machine() -> dict[str, Any]:
    """What the timings depend on: CPU model, usable cores, native bf16, Python."""
    model, flags = _cpuinfo()
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {
        "cpu": model or platform.processor() or platform.machine(),
        "cores": cores,
        **{flag: flag in flags for flag in BF16_FLAGS},
        "platform": platform.platform(),
        "python": platform.python_version(),
    }


def _torch_version() -> str | None:
    """The loaded torch's version, else the installed one's (a benchmark without torch does not
    pay for importing it)."""
    torch = sys.modules.get("torch")
    if torch is not None:
        return str(torch.__version__)
    try:
        return metadata.version("torch")
    except metadata.PackageNotFoundError:
        return None


def provenance() -> dict[str, Any]:
    """When, at which commit (and whether the code differed from it), where and how a run ran.

    ``dirty`` ignores ``benchmarks/results`` itself, which every recorded run modifies.
    """
    info: dict[str, Any] = {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
    }
    commit = _git("rev-parse", "--short", "HEAD")
    if commit:
        info["commit"] = commit
        status = _git("status", "--porcelain", "--", ".", ":(exclude)benchmarks/results")
        if status is not None:
            info["dirty"] = bool(status)
    info["machine"] = machine()
    info["torch"] = _torch_version()
    info["command"] = " ".join([Path(sys.executable).name, *sys.argv])
    return info


def _jsonable(value: object) -> object:
    """numpy/torch scalars and paths as JSON values; anything else is refused (TypeError)."""
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    item = getattr(value, "item", None)
    if callable(item):
        return item()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable: {value!r}")


def record(name: str, entry: Mapping[str, Any]) -> Path:
    """Append ``entry`` with :func:`provenance` to ``RESULTS_DIR/<name>.json``; return the path.

    The file is a JSON list, oldest first. It is rewritten whole through a temporary sibling and
    ``os.replace``, so an entry that cannot be serialised or a crash mid-write leaves the
    previous history as it was. Entry keys may not shadow the provenance keys.
    """
    clash = sorted(set(entry) & set(PROVENANCE_KEYS))
    if clash:
        raise ValueError(f"entry keys {clash} are provenance keys that record() sets itself")
    path = RESULTS_DIR / f"{name}.json"
    history = json.loads(path.read_text()) if path.exists() else []
    if not isinstance(history, list):
        raise ValueError(f"{path} is not a JSON list of entries; not appending to it")
    info = provenance()
    date = info.pop("date")
    history.append({"date": date, **entry, **info})
    text = json.dumps(history, indent=2, default=_jsonable) + "\n"
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return path
