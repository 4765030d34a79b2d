"""How many model workers a Bento runs and how many threads each uses.

A worker's threads are torch's (or ONNX Runtime's) intra-op threads; for ``onnx-int8``,
which scores one text per forward pass, they are how many single-threaded passes run side
by side (``components/inference.py``).

The rule, from the cores the server may use (cgroup/affinity aware): up to 7 cores, one
model worker with every core. A batch of short sentences keeps all the cores of a small box
busy in one forward pass, and a second worker would hold a second copy of the model and
split the same cores. From 8 cores, one worker per 4 cores with 4 threads each: each worker
batches its own requests, and the intra-op speed-up of a small encoder on short inputs
flattens well before 8 threads. ``serving.workers`` and ``serving.num_threads`` override
either number; threads then default to the cores shared out among the workers.
"""

from __future__ import annotations

from dataclasses import dataclass

CORES_PER_WORKER = 4
MIN_CORES_FOR_SEVERAL_WORKERS = 8


@dataclass(frozen=True)
class WorkerPlan:
    """Model workers (processes) and threads per worker."""

    workers: int
    threads: int


def plan_workers(cores: int, workers: int | None = None, threads: int | None = None) -> WorkerPlan:
    """The model workers and threads per worker for a machine with ``cores`` cores.

    Args:
        cores: CPU cores the server may use (at least 1).
        workers: ``serving.workers``; None picks from the cores (see the module docstring).
        threads: ``serving.num_threads``; None shares the cores out among the workers.

    Returns:
        The plan; never fewer than one worker or one thread.
    """
    cores = max(1, cores)
    if workers is None:
        several = cores >= MIN_CORES_FOR_SEVERAL_WORKERS
        workers = cores // CORES_PER_WORKER if several else 1
    if threads is None:
        threads = max(1, cores // workers)
    return WorkerPlan(workers=max(1, workers), threads=max(1, threads))
