"""One logging format for every Ratchet entry point, and tqdm progress bars that respect it."""

from __future__ import annotations

import logging
import os
import sys

LOG_FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"
DATE_FORMAT = "%H:%M:%S"


def setup_logging(level: int = logging.INFO) -> None:
    """Configure the root logger once; library loggers that shout are turned down."""
    logging.basicConfig(level=level, format=LOG_FORMAT, datefmt=DATE_FORMAT, stream=sys.stderr)
    for noisy in ("urllib3", "httpx", "filelock", "git", "alembic", "matplotlib"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def progress_disabled() -> bool:
    """Progress bars are off when stderr is not a terminal in CI, or RATCHET_NO_PROGRESS is set."""
    return bool(os.environ.get("RATCHET_NO_PROGRESS")) or (
        bool(os.environ.get("CI")) and not sys.stderr.isatty()
    )
