"""What the two training stages (pretraining, fine-tuning) share around the loop.

Pretraining takes its optimiser keys from ``pretrain.*`` and fine-tuning from
``train.*``; both take the runtime keys (checkpoint cadence, compile, CPU speed-ups)
from ``train.*``: :func:`loop_settings` is where that split is written down. Both hand
on a :class:`TrainedModel`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import torch

from components.config import PretrainConfig, TrainConfig
from components.training.loop import LoopSettings
from components.training.runtime import (
    DistributedContext,
    Precision,
    choose_device,
    run_precision,
    start_process,
)


@dataclass(frozen=True)
class TrainedModel:
    """Where a training stage wrote its model and how the run went.

    Attributes:
        model_dir: the Hugging Face folder (safetensors + tokenizer; a classifier's also
            holds ``id2label``).
        metrics: e.g. ``train_loss``, ``steps``, ``train_samples_per_second``, and the
            stage's own: ``val_accuracy``/``val_loss`` (fine-tuning),
            ``perplexity_before``/``perplexity_after`` (pretraining).
        info: non-numeric facts (device, precision, the model the run started from).
    """

    model_dir: Path
    metrics: dict[str, float]
    info: dict[str, str] = field(default_factory=dict)


class RunStart(NamedTuple):
    """Where a started run trains: its process group, device and resolved precision."""

    context: DistributedContext
    device: torch.device
    precision: Precision


def start_run(seed: int, runtime: TrainConfig, checkpoint_dir: Path | None) -> RunStart:
    """Start a training run: join the DDP group (under torchrun), set the thread count,
    seed everything with ``seed``, pick the device and resolve ``train.precision`` once
    (kept in ``checkpoint_dir`` so a resumed run keeps it: claim the folder first).

    Call it before the model is built: an ``auto`` precision on a bf16 CPU is timed,
    which draws from torch's random generator after the seeding.
    """
    context = start_process(seed, runtime.deterministic, runtime.num_threads)
    device = choose_device(context)
    precision = run_precision(
        runtime.precision, device, runtime.deterministic, checkpoint_dir, context
    )
    return RunStart(context, device, precision)


def loop_settings(
    optimiser: PretrainConfig | TrainConfig,
    runtime: TrainConfig,
    precision: Precision,
    total_steps: int,
    description: str,
) -> LoopSettings:
    """The settings every run of the loop shares.

    Args:
        optimiser: the stage's section: ``lr``, ``weight_decay``, ``warmup_fraction``
            and ``seed`` are read from it.
        runtime: ``train.*``: ``checkpoint_every_*``, ``compile`` and ``cpu_speedups``.
        precision: the run's resolved precision.
        total_steps: optimiser steps the run takes.
        description: the progress bar's label.

    Returns:
        Settings with the loop's defaults for what only fine-tuning sets (gradient
        clipping and accumulation, evaluation cadence, early stopping, ``keep``).
    """
    return LoopSettings(
        total_steps=total_steps,
        lr=optimiser.lr,
        weight_decay=optimiser.weight_decay,
        warmup_fraction=optimiser.warmup_fraction,
        checkpoint_every_steps=runtime.checkpoint_every_steps,
        checkpoint_every_minutes=runtime.checkpoint_every_minutes,
        seed=optimiser.seed,
        precision=precision,
        compile=runtime.compile,
        cpu_speedups=runtime.cpu_speedups,
        description=description,
    )
