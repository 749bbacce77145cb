"""Where a run's events go. ``file_logger``: every event, DEBUG included, appended to
``$EAGRL_HOME/logs/dagster_events.log`` (or the logger's ``path``). ``step_lines_logger``: one
console line as each step ends (its asset, or how many for a many-asset step such as the dbt
build, the seconds, the status and a few numeric metadata values); ``make run`` turns it on and
sends the colored console logger only warnings and errors."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import Any

from dagster import Field, InitLoggerContext, logger
from dagster._utils.log import default_date_format_string, default_format_string


def default_log_path() -> Path:
    home = os.environ.get("EAGRL_HOME") or Path(__file__).resolve().parents[1] / ".eagrl"
    return Path(home) / "logs" / "dagster_events.log"


@logger(
    config_schema={
        "path": Field(str, is_required=False, description="The file (default under EAGRL_HOME)."),
        "log_level": Field(str, default_value="DEBUG", is_required=False),
    },
    description="Every Dagster event of a run, appended to one file under EAGRL_HOME/logs.",
)
def file_logger(init_context: InitLoggerContext) -> logging.Logger:
    path = Path(init_context.logger_config.get("path") or default_log_path())
    path.parent.mkdir(parents=True, exist_ok=True)
    level = init_context.logger_config["log_level"].upper()
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter(default_format_string(), default_date_format_string()))
    handler.setLevel(level)
    events = logging.Logger("eagrl.dagster_events", level=level)
    events.addHandler(handler)
    return events


class _StepLines(logging.Handler):
    """Prints a line at each STEP_SUCCESS / STEP_FAILURE, with what the step materialized."""

    def __init__(self, label: str) -> None:
        super().__init__(logging.DEBUG)
        self.label = label
        self.materialized: dict[str, list[Any]] = {}

    def emit(self, record: logging.LogRecord) -> None:
        event = (getattr(record, "dagster_meta", None) or {}).get("dagster_event")
        step = getattr(event, "step_key", None)
        if event is None or not step:
            return
        kind = event.event_type_value
        if kind == "ASSET_MATERIALIZATION":
            self.materialized.setdefault(step, []).append(event.event_specific_data.materialization)
        elif kind in ("STEP_SUCCESS", "STEP_FAILURE"):
            seconds = (getattr(event.event_specific_data, "duration_ms", 0) or 0) / 1000
            status = "ok" if kind == "STEP_SUCCESS" else "FAILED"
            print(
                step_line(self.label, step, seconds, status, self.materialized.pop(step, [])),
                file=sys.__stdout__,
                flush=True,
            )


def _number(value: Any) -> str | None:
    raw = getattr(value, "value", value)
    if isinstance(raw, bool) or not isinstance(raw, int | float):
        return None
    return f"{raw:.3f}" if isinstance(raw, float) else str(raw)


def step_line(label: str, step: str, seconds: float, status: str, materialized: list[Any]) -> str:
    """``[step] label asset seconds status k=v, ...`` (a many-asset step: its name and count)."""
    if len(materialized) == 1:
        name = materialized[0].asset_key.to_user_string()
        values = ((k, _number(v)) for k, v in (materialized[0].metadata or {}).items())
        shown = [f"{k}={v}" for k, v in values if v is not None][:4]
    else:
        name, shown = step, [f"{len(materialized)} assets"] if materialized else []
    return f"[step] {label:<21} {name:<24} {seconds:7.1f} s  {status:<6} " + ", ".join(shown)


@logger(
    config_schema={"label": Field(str, default_value="", is_required=False)},
    description="One console line as each step ends (make run turns it on).",
)
def step_lines_logger(init_context: InitLoggerContext) -> logging.Logger:
    lines = logging.Logger("eagrl.step_lines", level=logging.DEBUG)
    lines.addHandler(_StepLines(init_context.logger_config["label"]))
    return lines
