"""Progress bars for the long loops (MCTS over patients, SFT and GRPO steps): tqdm on stderr,
so `make run`'s quiet console still shows where a long step is. ``EAGRL_PROGRESS=0`` turns them
off (the tests do; so can a CI log)."""

from __future__ import annotations

import os

from tqdm import tqdm


def progress_enabled() -> bool:
    return os.environ.get("EAGRL_PROGRESS", "1").strip().lower() not in ("0", "false", "no", "")


def progress_bar(total: int, description: str, unit: str) -> tqdm:
    """A bar over ``total`` items that vanishes when done (the step's line says the rest)."""
    return tqdm(
        total=total,
        desc=description,
        unit=unit,
        disable=not progress_enabled() or total < 2,
        leave=False,
        dynamic_ncols=True,
    )
