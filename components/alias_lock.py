"""The alias lock: one writer of a registered model's aliases at a time.

An OS file lock in the state folder (released by the kernel if the holder dies) and, with a
Prefect server configured (``PREFECT_API_URL``), a Prefect global concurrency limit per
registered model, so machines that share a remote MLflow registry take turns too.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from components.errors import RegistryError

ALIAS_LIMIT_PREFIX = "ratchet-alias"
# A move holds the lock for a few registry calls (the Bento is built before), so a writer
# that waits longer than this is waiting on a stuck process, not on a slow move.
ALIAS_LOCK_TIMEOUT_S = 600.0


def default_state_dir() -> Path:
    """The state folder (``$RATCHET_HOME`` or ``.ratchet`` in the working directory)."""
    from components.state import ProjectPaths

    return ProjectPaths.discover().state_dir


def lock_file(model_name: str, state_dir: Path) -> Path:
    return state_dir / f"alias-{registry_slug(model_name)}.lock"


def registry_slug(model_name: str) -> str:
    return "".join(char if char.isalnum() or char in "-_." else "-" for char in model_name)


def alias_limit_name(model_name: str) -> str:
    """The Prefect global concurrency limit that serialises ``model_name``'s alias moves."""
    return f"{ALIAS_LIMIT_PREFIX}-{model_name}"


@contextmanager
def prefect_alias_slot(model_name: str, timeout_s: float) -> Iterator[None]:
    """Hold the Prefect server's one-slot limit for the model (shared by every machine)."""
    from prefect.client.orchestration import get_client
    from prefect.concurrency.asyncio import AcquireConcurrencySlotTimeoutError
    from prefect.concurrency.sync import concurrency

    name = alias_limit_name(model_name)
    with get_client(sync_client=True) as client:
        client.upsert_global_concurrency_limit_by_name(name, limit=1)
    try:
        with concurrency(name, occupy=1, timeout_seconds=timeout_s, strict=True):
            yield
    except AcquireConcurrencySlotTimeoutError as error:  # not a timeout inside the move
        raise RegistryError(
            f"another alias move of {model_name} held the Prefect concurrency limit {name!r} "
            f"for more than {timeout_s:g} s; try again, or check the limit with "
            f"`prefect gcl inspect {name}`"
        ) from error


@contextmanager
def alias_lock(
    model_name: str, state_dir: Path, timeout_s: float = ALIAS_LOCK_TIMEOUT_S
) -> Iterator[None]:
    """Hold the single alias-writer slot of a registered model.

    An OS file lock in the state folder (released by the kernel if the holder dies) and,
    when ``PREFECT_API_URL`` is set, also the Prefect global concurrency limit
    ``ratchet-alias-<model>``, which other machines using the same server respect.

    Raises:
        RegistryError: the slot stayed taken for ``timeout_s`` seconds.
    """
    from filelock import FileLock, Timeout

    path = lock_file(model_name, state_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Not thread-local: a second holder in this process must wait, as another process would.
    lock = FileLock(path, timeout=timeout_s, thread_local=False)
    try:
        lock.acquire()
    except Timeout as error:
        raise RegistryError(
            f"another alias move of {model_name} held {path} for more than {timeout_s:g} s; "
            "try again once it has finished"
        ) from error
    try:
        if os.environ.get("PREFECT_API_URL"):
            with prefect_alias_slot(model_name, timeout_s):
                yield
        else:
            yield
    finally:
        lock.release()
