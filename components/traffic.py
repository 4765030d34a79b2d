"""Read the Bento's inference log (``traffic/`` in the state folder) into a table.

The server writes it (``serving/traffic_log.py``): one JSON line per served text, in
daily-rotated files per server worker. A line cut short by a killed server is skipped.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pandas as pd

from components.errors import ConfigError
from components.state import ProjectPaths
from components.text_features import MONITOR_NAME, TRAFFIC_DIR_NAME

DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86_400}
DURATION_PATTERN = re.compile(r"^(\d+(?:\.\d+)?)([smhd])$")


def traffic_dir(paths: ProjectPaths) -> Path:
    return paths.model_state_dir / TRAFFIC_DIR_NAME


def parse_duration(text: str) -> float:
    """Seconds in a duration such as ``24h``, ``30m``, ``7d``.

    Raises:
        ConfigError: not a number followed by s, m, h or d.
    """
    match = DURATION_PATTERN.match(text.strip())
    if not match:
        raise ConfigError(f"--since {text!r}: expected a number and a unit s/m/h/d, e.g. 24h")
    return float(match.group(1)) * DURATION_UNITS[match.group(2)]


def log_files(log_dir: Path) -> list[Path]:
    """The data files of the log, rotated ones included."""
    return sorted((log_dir / MONITOR_NAME / "data").glob("data.*.log*"))


def in_window(when: object, since: float, until: float | None) -> bool:
    return isinstance(when, int | float) and when >= since and (until is None or when <= until)


def read_traffic(log_dir: Path, since: float, until: float | None = None) -> pd.DataFrame:
    """The logged texts served at or after ``since`` (epoch seconds), one row per text.

    Returns:
        The log's columns (``time``, ``request``, ``version``, ``label``, ``confidence``,
        the text features, ``embedding``); empty when nothing was logged in the window.
    """
    records = []
    for path in log_files(log_dir):
        with path.open(encoding="utf-8", errors="replace") as lines:
            for line in lines:
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:  # the last line of a killed server
                    continue
                when = record.get("time")
                if in_window(when, since, until):
                    records.append(record)
    return pd.DataFrame.from_records(records)
