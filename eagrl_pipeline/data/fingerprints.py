"""Fingerprints of raw input files, shared by the raw assets and the raw-input sensor.

Two of them, so that a run with nothing new reads nothing: ``stat_fingerprint`` hashes each
file's relative name, size and modification time (no file is opened: microseconds for a 10 GB
MIMIC-IV release), and ``content_fingerprint`` hashes the names and the bytes (the data
version: a touched but identical file keeps it). A raw asset computes the cheap one first and
reads the files only when it differs from the one its last snapshot recorded.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from pathlib import Path


def _name(path: Path, root: Path | None) -> str:
    return path.relative_to(root).as_posix() if root else path.name


def stat_fingerprint(paths: Iterable[Path]) -> str:
    """Hash of (absolute path, size, mtime in ns) per file; reads no contents. The path is
    absolute so that another folder holding a file of the same name, size and mtime does not
    pass for the one the last snapshot read."""
    entries = []
    for path in sorted(Path(p).expanduser().resolve() for p in paths):
        stat = path.stat()
        entries.append([path.as_posix(), stat.st_size, stat.st_mtime_ns])
    return hashlib.blake2b(json.dumps(entries).encode(), digest_size=16).hexdigest()


def content_fingerprint(paths: Iterable[Path], root: Path | None = None) -> str:
    """Hash of the files' relative names and contents (order-independent)."""
    digest = hashlib.blake2b(digest_size=16)
    for path in sorted(Path(p) for p in paths):
        digest.update(_name(path, root).encode())
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()
