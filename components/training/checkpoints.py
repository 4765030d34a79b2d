"""Atomic checkpoints that hold everything an exact resume needs.

Weights, optimiser, scheduler, every rank's RNG states, the data position and the
early-stopping counters, written on a background thread into ``step-NNNNNNNN`` folders
(the last two kept), on a schedule of steps and/or minutes.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from components.errors import TrainingError
from components.files import PARTIAL_MARK, atomic_dir
from components.training.resume import RUN_KEY_FILE
from components.training.runtime import PRECISION_FILE, DistributedContext

logger = logging.getLogger(__name__)

CHECKPOINT_PREFIX = "step-"
KEEP_CHECKPOINTS = 2


@dataclass
class TrainState:
    """Loop position and early-stopping counters, saved with every checkpoint."""

    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0
    samples_seen: int = 0
    best_metric: float | None = None
    best_step: int = 0
    best_scores: dict[str, float] = field(default_factory=dict)
    last_scores: dict[str, float] = field(default_factory=dict)
    evals_without_improvement: int = 0
    stopped_early: bool = False
    loss_sum: float = 0.0
    loss_count: int = 0
    # Processes that wrote it: the data position, the schedule's length and the RNG
    # states are per rank, so a checkpoint resumes only with the same number.
    world_size: int = 1


def checkpoint_payload(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    rng_states: list[dict[str, Any]],
    best_weights: dict[str, torch.Tensor] | None = None,
) -> dict[str, Any]:
    """Everything an exact resume needs, as CPU copies that later training cannot change.

    The model and optimiser state dicts hold live tensors that the next step updates in
    place, so they are copied; ``best_weights`` is already a private CPU copy.
    """
    return {
        "model": detached_copy(model.state_dict()),
        "optimizer": detached_copy(optimizer.state_dict()),
        "scheduler": scheduler.state_dict(),
        "rng": rng_states,
        "best_weights": best_weights,
    }


def detached_copy(value: Any) -> Any:
    """``value`` with every tensor inside dicts/lists/tuples copied to the CPU."""
    if isinstance(value, torch.Tensor):
        return value.detach().to("cpu", copy=True)
    if isinstance(value, dict):
        return {key: detached_copy(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(detached_copy(item) for item in value)
    return value


def write_checkpoint(checkpoint_dir: Path, payload: dict[str, Any], state: TrainState) -> Path:
    """Write a checkpoint atomically: into a temporary folder, fsync, then rename it to
    ``step-NNNNNNNN`` (see :func:`components.files.atomic_dir`). A kill at any moment
    leaves either the old or the new checkpoint, never half of one. Older checkpoints
    beyond the last two are removed."""
    final = checkpoint_dir / f"{CHECKPOINT_PREFIX}{state.step:08d}"
    with atomic_dir(final) as partial:
        torch.save(payload, partial / "checkpoint.pt")
        (partial / "state.json").write_text(json.dumps(asdict(state)), encoding="utf-8")
        with open(partial / "checkpoint.pt", "rb") as handle:
            os.fsync(handle.fileno())
    for old in list_checkpoints(checkpoint_dir)[:-KEEP_CHECKPOINTS]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def save_checkpoint(
    checkpoint_dir: Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    state: TrainState,
    rng_states: list[dict[str, Any]],
    best_weights: dict[str, torch.Tensor] | None = None,
) -> Path:
    """Write a checkpoint of the current training state now (see ``write_checkpoint``)."""
    payload = checkpoint_payload(model, optimizer, scheduler, rng_states, best_weights)
    return write_checkpoint(checkpoint_dir, payload, copy.deepcopy(state))


class CheckpointWriter:
    """Writes checkpoints on a background thread, so training does not wait on the disk.

    The payload is copied in memory first (a fraction of a second for a small BERT), and
    serialising plus fsyncing a few hundred MB, which takes seconds, overlaps the next
    steps. At most one write is in flight: a new checkpoint first waits for the previous
    one, and ``wait`` blocks until the last one is on disk. A kill mid-write leaves only a
    temporary folder; the previous complete checkpoint still resumes exactly.
    """

    def __init__(self, checkpoint_dir: Path) -> None:
        self.checkpoint_dir = checkpoint_dir
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None
        self.written: list[Path] = []

    def submit(self, payload: dict[str, Any], state: TrainState) -> None:
        self.wait()
        snapshot = copy.deepcopy(state)
        self._thread = threading.Thread(
            target=self._write, args=(payload, snapshot), name="checkpoint-writer", daemon=True
        )
        self._thread.start()

    def _write(self, payload: dict[str, Any], state: TrainState) -> None:
        try:
            self.written.append(write_checkpoint(self.checkpoint_dir, payload, state))
        except BaseException as error:  # re-raised on the training thread by wait()
            self._error = error

    def wait(self) -> None:
        """Block until the write in flight is on disk; raise if it failed."""
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._error is not None:
            error, self._error = self._error, None
            raise TrainingError(f"writing a checkpoint to {self.checkpoint_dir} failed: {error}")


class CheckpointSchedule:
    """When to checkpoint: every N optimiser steps, after M minutes of wall time since the
    last checkpoint, or both (whichever comes first).

    A time interval bounds both the work a crash loses and the share of time spent
    checkpointing on any hardware: a step count that suits a CPU checkpoints a GPU run
    every few seconds. Under DDP every rank must checkpoint at the same step (the RNG
    gather is a collective), so the main rank's clock decides and is broadcast.
    """

    def __init__(
        self,
        every_steps: int | None,
        every_minutes: float | None,
        context: DistributedContext | None = None,
        device: torch.device | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.every_steps = every_steps
        self.every_seconds = every_minutes * 60 if every_minutes is not None else None
        self.context = context or DistributedContext()
        self.device = device or torch.device("cpu")
        self.clock = clock
        self.last = clock()

    def due(self, step: int) -> bool:
        """Whether a checkpoint is due after optimiser step ``step`` (same on all ranks)."""
        by_steps = self.every_steps is not None and step % self.every_steps == 0
        if self.every_seconds is None:
            return by_steps
        by_time = self.clock() - self.last >= self.every_seconds
        if self.context.enabled:
            import torch.distributed as dist

            flag = torch.tensor([float(by_time)], device=self.device)
            dist.broadcast(flag, src=0)
            by_time = bool(flag.item())
        return by_steps or by_time

    def written(self) -> None:
        """Restart the time interval (call when a checkpoint was submitted)."""
        self.last = self.clock()


def list_checkpoints(checkpoint_dir: Path) -> list[Path]:
    """Complete checkpoints, oldest first (temporary folders are ignored)."""
    if not checkpoint_dir.is_dir():
        return []
    return sorted(p for p in checkpoint_dir.glob(f"{CHECKPOINT_PREFIX}*") if p.is_dir())


def load_latest_checkpoint(checkpoint_dir: Path | None) -> tuple[dict[str, Any], TrainState] | None:
    """The newest complete checkpoint's payload and loop state, or None."""
    if checkpoint_dir is None:
        return None
    found = list_checkpoints(checkpoint_dir)
    if not found:
        return None
    latest = found[-1]
    payload = torch.load(latest / "checkpoint.pt", map_location="cpu", weights_only=False)
    state = TrainState(**json.loads((latest / "state.json").read_text(encoding="utf-8")))
    logger.info("resuming from %s (step %d)", latest, state.step)
    return payload, state


def clear_checkpoints(checkpoint_dir: Path) -> None:
    """Remove a finished run's checkpoints, so the next run of the command starts fresh."""
    # Partial folders of writes a kill interrupted (``.tmp-*``: written before files.py).
    partials = [*checkpoint_dir.glob(f".*{PARTIAL_MARK}*"), *checkpoint_dir.glob(".tmp-*")]
    for found in [*list_checkpoints(checkpoint_dir), *partials]:
        shutil.rmtree(found, ignore_errors=True)
    (checkpoint_dir / PRECISION_FILE).unlink(missing_ok=True)
    (checkpoint_dir / RUN_KEY_FILE).unlink(missing_ok=True)
