"""The retrain slot: one retrain per registered model at a time.

Against a Prefect server a global concurrency limit per model; with Prefect's ephemeral API
an OS file lock in the state folder (the kernel releases it when a process dies).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager

from prefect.concurrency.sync import concurrency

from components.config import RatchetConfig
from components.state import ProjectPaths

RETRAIN_LIMIT_PREFIX = "ratchet-retrain"


def concurrency_limit_name(config: RatchetConfig) -> str:
    """One slot per registered model: two retrains never race on the same aliases."""
    return f"{RETRAIN_LIMIT_PREFIX}-{config.registry.model_name}"


def ensure_concurrency_limit(name: str) -> None:
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        client.upsert_global_concurrency_limit_by_name(name, limit=1)


@contextmanager
def retrain_slot(config: RatchetConfig, paths: ProjectPaths) -> Iterator[None]:
    """Hold the registry's single retrain slot for the whole run.

    Against a Prefect server this is a global concurrency limit (the server expires the
    lease of a run that died). Prefect's ephemeral API keeps leases in the memory of a
    per-process server, so a killed run would hold its slot for ever; there an OS file
    lock on the state folder (``filelock``) does the job, and the kernel releases it when
    a process dies.
    """
    from filelock import FileLock, Timeout

    if os.environ.get("PREFECT_API_URL"):
        name = concurrency_limit_name(config)
        ensure_concurrency_limit(name)
        with concurrency(name, occupy=1, timeout_seconds=6 * 3600, strict=True):
            yield
        return
    lock_path = paths.state_dir / f"retrain-{config.registry.model_name}.lock"
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    # Not thread-local: a second retrain in this process waits, as another process would.
    lock = FileLock(lock_path, thread_local=False)
    try:
        lock.acquire(timeout=0)
    except Timeout:
        logging.getLogger(__name__).info("another retrain holds %s; waiting", lock_path)
        lock.acquire(timeout=-1)
    try:
        yield
    finally:
        lock.release()
