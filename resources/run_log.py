"""Dagster's event log as a file: every event of a run, DEBUG included, appended to
``$EAGRL_HOME/logs/dagster_events.log`` (or the logger's ``path``). ``make run`` sends the console
only warnings and errors and prints one line per step itself; the file keeps the rest."""

from __future__ import annotations

import logging
import os
from pathlib import Path

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
