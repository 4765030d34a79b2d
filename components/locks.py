"""File locks that give a shared folder one writer at a time.

``data_lock(data_dir)`` serialises every write of a data folder (``data/incoming``,
``data/raw``, ``data/prepared`` and the ``dvc.lock`` entries that record them): the
retrain flow's ingest -> validate -> prepare -> version -> push sequence, the
``ratchet ingest | validate | prepare`` commands that ``dvc repro`` runs, and
``ratchet data pull | commit``. Two retrains of different registered models, or a retrain
and a ``dvc repro``, then take turns instead of deleting each other's staging folder or
recording another run's data under their md5.

The lock is an OS file lock (``filelock``) in the data folder itself,
``<data_dir>/.ratchet-data.lock``, so every process that writes the folder finds the
same lock whatever its state folder; the kernel releases it when a holder dies. It is
re-entrant within a thread, and a child process started while it is held (``dvc repro``,
whose stages run ``ratchet ingest``) inherits it through :data:`DATA_LOCK_HELD_ENV`.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from filelock import FileLock, Timeout

from components.errors import DataError

logger = logging.getLogger(__name__)

DATA_LOCK_FILE = ".ratchet-data.lock"
# Set for a child process while its parent holds the lock of the folder it names.
DATA_LOCK_HELD_ENV = "RATCHET_DATA_LOCK_HELD"

_held_here = threading.local()


def data_lock_path(data_dir: Path) -> Path:
    """The lock file of ``data_dir`` (one lock per data folder, by absolute path)."""
    return data_dir.resolve() / DATA_LOCK_FILE


def held_data_locks() -> set[Path]:
    """Lock files this thread holds now."""
    held: set[Path] | None = getattr(_held_here, "paths", None)
    if held is None:
        held = _held_here.paths = set()
    return held


def inherited(path: Path) -> bool:
    """Whether a parent process holds ``path`` for this process."""
    return os.environ.get(DATA_LOCK_HELD_ENV) == str(path)


@contextmanager
def data_lock(data_dir: Path, timeout_s: float | None = None) -> Iterator[Path]:
    """Hold the write lock of ``data_dir`` for the body of the ``with`` block.

    Args:
        data_dir: the data folder (today the project's ``data/``).
        timeout_s: give up after this many seconds; None waits as long as it takes (a
            writer holds it for the few minutes of a data preparation).

    Yields:
        The lock file.

    Raises:
        DataError: ``timeout_s`` passed while another process held the lock.
    """
    path = data_lock_path(data_dir)
    held = held_data_locks()
    if path in held or inherited(path):
        yield path
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(path, thread_local=True)
    try:
        lock.acquire(timeout=0)
    except Timeout:
        logger.info("another process is writing %s (lock %s); waiting", data_dir, path)
        try:
            lock.acquire(timeout=-1 if timeout_s is None else timeout_s)
        except Timeout as error:
            raise DataError(
                f"{data_dir} is being written by another process (lock {path}) and it did "
                f"not finish within {timeout_s:g} s; try again when it is done (the lock "
                "is released when that process ends)"
            ) from error
    held.add(path)
    try:
        yield path
    finally:
        held.discard(path)
        lock.release()


def child_environment(lock_file: Path) -> dict[str, str]:
    """The environment for a child process that works under the lock ``lock_file`` this
    process holds (``dvc repro`` running ``ratchet ingest``)."""
    return {**os.environ, DATA_LOCK_HELD_ENV: str(lock_file)}
