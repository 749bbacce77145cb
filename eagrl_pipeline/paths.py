"""Atomic writes: a crash mid-write never replaces a good output with a half-written one."""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def atomic_path(target: str | Path) -> Iterator[Path]:
    """Yield a temporary sibling path; rename it onto ``target`` only if the block succeeds.

    Works for files and folders. The temporary path sits in the same directory so the final
    ``os.replace`` is a rename on one file system.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp_dir = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    tmp = tmp_dir / target.name
    try:
        yield tmp
        if not tmp.exists():
            raise FileNotFoundError(f"atomic write to {target} produced nothing at {tmp}")
        if tmp.is_dir():
            _swap_folder(tmp, target, tmp_dir / ".replaced")
        else:
            os.replace(tmp, target)
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)


def _swap_folder(new: Path, target: Path, parking: Path, attempts: int = 50) -> None:
    """Put folder ``new`` at ``target``; a previous ``target`` goes to this writer's own
    ``parking`` place (removed with the writer's temporary folder), never a shared ``.old``.

    A rename cannot replace a non-empty folder, so the old one moves away first; when another
    writer puts its folder there in between, the rename fails and this writer tries again (the
    last writer wins, as with files).
    """
    parking.mkdir(exist_ok=True)
    for attempt in range(attempts):
        if target.exists():
            with contextlib.suppress(FileNotFoundError):
                os.replace(target, parking / f"{attempt}")
        try:
            os.replace(new, target)
            return
        except OSError as exc:
            if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                raise
    raise OSError(f"could not put {new} at {target}: other writers kept replacing it")
