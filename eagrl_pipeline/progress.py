"""Progress bars for the long loops (MCTS over patients, SFT and GRPO steps), so `make run`'s
quiet console still shows where a long step is. They write to the process's own stderr
(``sys.__stderr__``): Dagster captures a step's ``sys.stderr`` into its compute logs, where a
bar would not reach the terminal. ``EAGRL_PROGRESS=0`` turns them off (the tests do; so can a
CI log)."""

from __future__ import annotations

import os
import sys
from typing import Any

from tqdm import tqdm


def progress_enabled() -> bool:
    return os.environ.get("EAGRL_PROGRESS", "1").strip().lower() not in ("0", "false", "no", "")


def progress_bar(total: int, description: str, unit: str) -> tqdm:
    """A bar over ``total`` items that vanishes when done (the step's line says the rest)."""
    return tqdm(
        total=total,
        desc=description,
        unit=unit,
        file=sys.__stderr__ or sys.stderr,
        disable=not progress_enabled() or total < 2,
        leave=False,
        dynamic_ncols=True,
    )


def training_progress(description: str) -> Any:
    """A transformers ``TrainerCallback`` with a bar over the optimizer steps (the trainers' own
    tqdm is off: it writes to the captured ``sys.stderr``)."""
    from transformers import TrainerCallback

    class TrainingProgress(TrainerCallback):
        def __init__(self) -> None:
            self.bar: tqdm | None = None

        def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            if state.is_world_process_zero:
                self.bar = progress_bar(int(state.max_steps or 0), description, "step")
                self.bar.update(int(state.global_step or 0))

        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            if self.bar is not None:
                self.bar.update(1)

        def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            if self.bar is not None:
                self.bar.close()
                self.bar = None

    return TrainingProgress()
