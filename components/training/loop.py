"""The training loop shared by MLM pretraining and classifier fine-tuning.

Read it like nanoGPT's ``train.py``: set up (device, precision, optimiser, resume), then
one optimiser step at a time (``train_step``), evaluating, reporting and checkpointing on
a cadence, and finally the summary metrics. It runs unchanged on a laptop CPU, one GPU,
or ``torchrun --nproc_per_node N``. Hand-written on purpose: it beats ``Trainer`` on the
CPU (``benchmarks/train_throughput.py``) and resumes exactly after a kill.

Exact resume works because the batch order is a pure function of (seed, epoch), any
per-step randomness other than dropout (MLM masking) is derived from (seed, step, rank),
and the global RNG states that drive dropout are saved with every checkpoint.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import nullcontext, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
from torch import nn
from tqdm.auto import tqdm

from components.errors import TrainingError
from components.kernels.cpu_speedups import (
    AppliedSpeedups,
    SparseEmbeddingGradient,
    apply_cpu_speedups,
)
from components.logs import progress_disabled
from components.training.batching import BatchSource, micro_batches, move_to
from components.training.checkpoints import (
    CheckpointSchedule,
    CheckpointWriter,
    TrainState,
    checkpoint_payload,
    detached_copy,
    load_latest_checkpoint,
)
from components.training.optimization import build_optimizer, linear_schedule
from components.training.runtime import (
    DistributedContext,
    Precision,
    all_ranks_rng,
    choose_device,
    choose_precision,
    restore_rng_state,
)

logger = logging.getLogger(__name__)


MetricsCallback = Callable[[int, dict[str, float]], None]
"""``on_metrics(step, metrics)``: per-step loss, lr, grad_norm, samples_per_second, and
validation metrics (``val_*``) when evaluated. The tracking layer connects it to MLflow."""


@dataclass(frozen=True)
class LoopSettings:
    """Hyper-parameters of one training run, gathered from ``pretrain.*`` or ``train.*``."""

    total_steps: int
    lr: float
    weight_decay: float
    warmup_fraction: float
    max_grad_norm: float = 1.0
    grad_accum_steps: int = 1
    eval_every_steps: int | None = None
    early_stopping_patience: int | None = None
    keep: Literal["best", "last"] = "best"
    checkpoint_every_steps: int | None = None
    checkpoint_every_minutes: float | None = None
    seed: int = 42
    precision: str = "auto"
    compile: bool = False
    cpu_speedups: bool = True
    description: str = "train"


@dataclass
class LoopResult:
    """What a finished loop hands back (the model holds the weights ``keep`` chose)."""

    state: TrainState
    metrics: dict[str, float] = field(default_factory=dict)
    precision: Precision = "fp32"
    device: str = "cpu"


@dataclass
class LoopClock:
    """Where a run's time went: training steps (wall and CPU) and everything between them."""

    train_s: float = 0.0
    train_cpu_s: float = 0.0
    overhead_s: float = 0.0
    samples: int = 0  # examples trained on by all ranks in this process's run


@dataclass
class LoopRun:
    """What one run of the loop trains with and updates as it goes."""

    model: nn.Module  # the weights: evaluated, checkpointed and handed back
    trained: nn.Module  # what a step calls: ``model``, DDP-wrapped and/or compiled
    ddp: nn.parallel.DistributedDataParallel | None
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    settings: LoopSettings
    context: DistributedContext
    device: torch.device
    precision: Precision
    state: TrainState
    best_weights: dict[str, torch.Tensor] | None = None
    writer: CheckpointWriter | None = None
    clock: LoopClock = field(default_factory=LoopClock)


def run_loop(
    model: nn.Module,
    source: BatchSource,
    settings: LoopSettings,
    evaluate: Callable[[nn.Module], dict[str, float]] | None = None,
    metric_name: str = "val_accuracy",
    checkpoint_dir: Path | None = None,
    on_metrics: MetricsCallback | None = None,
    context: DistributedContext | None = None,
    lr_scales: Mapping[str, float] | None = None,
) -> LoopResult:
    """Train ``model`` in place; resume from ``checkpoint_dir`` when it holds a checkpoint.

    Args:
        model: a Hugging Face model whose forward returns ``.loss`` given the batch.
        source: batches per epoch and their collation.
        settings: steps, optimiser, schedule, clipping, eval/checkpoint cadence.
        evaluate: scores the model on validation data; higher ``metric_name`` is better.
            It must not draw random numbers (run the model in eval mode).
        metric_name: the key of ``evaluate``'s result used for early stopping and, with
            ``settings.keep == "best"``, for choosing the weights the run ends with.
        checkpoint_dir: where atomic checkpoints go; None disables checkpointing.
        on_metrics: per-step metrics callback (see ``MetricsCallback``); main rank only.
        context: the distributed context; None means a single process.
        lr_scales: learning-rate multipliers by parameter name (see ``build_optimizer``).

    Returns:
        The final loop state and summary metrics; ``model`` holds the best evaluated
        weights with ``keep="best"`` (the last ones when there is no evaluation), and the
        last step's with ``keep="last"``.
    """
    run = start_run(model, settings, checkpoint_dir, context or DistributedContext(), lr_scales)
    state, context = run.state, run.context
    stream = micro_batches(source, state.epoch, state.batch_in_epoch)
    bar = tqdm(
        total=settings.total_steps,
        initial=state.step,
        desc=settings.description,
        disable=progress_disabled() or not context.is_main,
        dynamic_ncols=True,
    )
    schedule = CheckpointSchedule(
        settings.checkpoint_every_steps, settings.checkpoint_every_minutes, context, run.device
    )
    speedups = (
        apply_cpu_speedups(model, sparse_embedding=not context.enabled)
        if settings.cpu_speedups and run.device.type == "cpu" and not settings.compile
        else AppliedSpeedups()
    )
    model.train()
    try:
        while state.step < settings.total_steps and not state.stopped_early:
            step_metrics = take_step(run, source, stream, speedups.embedding_gradient)
            loss = step_metrics["loss"]
            if evaluate is not None and evaluation_due(settings, state.step):
                step_metrics.update(evaluate_now(run, evaluate, metric_name))
            orchestration_start = time.perf_counter()
            if on_metrics is not None and context.is_main:
                on_metrics(state.step, dict(step_metrics))
            bar.update(1)
            samples_s = run.clock.samples / max(run.clock.train_s, 1e-9)
            bar.set_postfix(loss=f"{loss:.4f}", samples_s=f"{samples_s:.0f}")
            checkpoint_if_due(run, schedule)
            run.clock.overhead_s += time.perf_counter() - orchestration_start
    except BaseException:
        # Let a checkpoint already being written land, so the crash loses as little as
        # possible; the original error is the one worth reporting.
        if run.writer is not None:
            with suppress(TrainingError):
                run.writer.wait()
        raise
    finally:
        speedups.undo()
    bar.close()
    return finish_run(run, metric_name)


def start_run(
    model: nn.Module,
    settings: LoopSettings,
    checkpoint_dir: Path | None,
    context: DistributedContext,
    lr_scales: Mapping[str, float] | None,
) -> LoopRun:
    """Device, precision, optimiser and schedule, the checkpoint's state when resuming,
    and the model wrapped for DDP and ``torch.compile`` as the settings ask."""
    device = choose_device(context)
    precision = choose_precision(settings.precision, device)
    model.to(device)
    optimizer = build_optimizer(model, settings.lr, settings.weight_decay, device, lr_scales)
    warmup = int(settings.warmup_fraction * settings.total_steps)
    scheduler = linear_schedule(optimizer, warmup, settings.total_steps)
    state, best_weights = resume_state(checkpoint_dir, context, model, optimizer, scheduler)
    ddp: nn.parallel.DistributedDataParallel | None = None
    trained: nn.Module = model
    if context.enabled:
        ddp = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )
        trained = ddp
    if settings.compile:
        trained = torch.compile(trained)  # type: ignore[assignment]
    logger.info(
        "%s: %d steps on %s, precision %s, world size %d%s",
        settings.description,
        settings.total_steps,
        device,
        precision,
        context.world_size,
        f", resumed at step {state.step}" if state.step else "",
    )
    return LoopRun(
        model=model,
        trained=trained,
        ddp=ddp,
        optimizer=optimizer,
        scheduler=scheduler,
        settings=settings,
        context=context,
        device=device,
        precision=precision,
        state=state,
        best_weights=best_weights,
        writer=CheckpointWriter(checkpoint_dir) if checkpoint_dir is not None else None,
    )


def resume_state(
    checkpoint_dir: Path | None,
    context: DistributedContext,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
) -> tuple[TrainState, dict[str, torch.Tensor] | None]:
    """Load the latest checkpoint into the model, optimiser, schedule and RNGs.

    Returns:
        The loop state and best weights so far; a fresh state when there is none.

    Raises:
        TrainingError: the checkpoint was written by a different number of processes.
    """
    resumed = load_latest_checkpoint(checkpoint_dir)
    if resumed is None:
        return TrainState(world_size=context.world_size), None
    payload, state = resumed
    if state.world_size != context.world_size:
        raise TrainingError(
            f"the checkpoint in {checkpoint_dir} was written by {state.world_size} "
            f"process(es) and this run has {context.world_size}: resume with "
            f"{state.world_size} (torchrun --nproc_per_node), or delete the folder to "
            "start over"
        )
    model.load_state_dict(payload["model"])
    optimizer.load_state_dict(payload["optimizer"])
    scheduler.load_state_dict(payload["scheduler"])
    restore_rng_state(payload["rng"][context.rank])
    return state, payload["best_weights"]


def take_step(
    run: LoopRun,
    source: BatchSource,
    stream: Iterator[tuple[int, int, list[int]]],
    embedding_gradient: SparseEmbeddingGradient | None,
) -> dict[str, float]:
    """One optimiser step, counted into the state and the clock.

    Returns:
        The step's loss, learning rate, gradient norm and samples per second.
    """
    state, clock = run.state, run.clock
    step_start, step_cpu_start = time.perf_counter(), time.process_time()
    step_lr = float(run.scheduler.get_last_lr()[0])  # the rate this step trains at
    loss, grad_norm, samples = train_step(
        run.trained,
        run.ddp,
        run.optimizer,
        run.scheduler,
        source,
        stream,
        state,
        run.settings,
        run.precision,
        run.device,
        embedding_gradient,
    )
    samples *= run.context.world_size
    state.step += 1
    state.samples_seen += samples
    state.loss_sum += loss
    state.loss_count += 1
    clock.samples += samples
    step_seconds = time.perf_counter() - step_start
    clock.train_s += step_seconds
    clock.train_cpu_s += time.process_time() - step_cpu_start
    return {
        "loss": loss,
        "lr": step_lr,
        "grad_norm": grad_norm,
        "samples_per_second": samples / max(step_seconds, 1e-9),
    }


def evaluation_due(settings: LoopSettings, step: int) -> bool:
    """Evaluate after the last step and every ``eval_every_steps``."""
    is_last = step >= settings.total_steps
    return is_last or bool(settings.eval_every_steps and step % settings.eval_every_steps == 0)


def evaluate_now(
    run: LoopRun, evaluate: Callable[[nn.Module], dict[str, float]], metric_name: str
) -> dict[str, float]:
    """Score the model, track the best weights and early stopping; returns the scores."""
    scores = evaluate(run.model)
    run.model.train()
    run.state.last_scores = dict(scores)
    improved = track_best(run.state, scores, metric_name, run.settings)
    # Every rank keeps a copy, so all ranks end with the same weights.
    if improved and run.settings.keep == "best":
        run.best_weights = detached_copy(run.model.state_dict())
    return scores


def checkpoint_if_due(run: LoopRun, schedule: CheckpointSchedule) -> None:
    """Hand a checkpoint to the background writer when the schedule says so (not after
    the last step: the run's output follows at once)."""
    state = run.state
    finishing = state.step >= run.settings.total_steps or state.stopped_early
    if run.writer is None or finishing or not schedule.due(state.step):
        return
    rng_states = all_ranks_rng(run.context)
    if run.context.is_main:
        payload = checkpoint_payload(
            run.model, run.optimizer, run.scheduler, rng_states, run.best_weights
        )
        run.writer.submit(payload, state)
    schedule.written()


def finish_run(run: LoopRun, metric_name: str) -> LoopResult:
    """Wait for the last checkpoint, load the kept weights and sum up the run."""
    state, clock = run.state, run.clock
    if run.writer is not None:
        wait_start = time.perf_counter()
        run.writer.wait()
        clock.overhead_s += time.perf_counter() - wait_start
    if run.best_weights is not None:
        run.model.load_state_dict(run.best_weights)
    metrics = {
        "train_loss": state.loss_sum / max(state.loss_count, 1),
        "steps": float(state.step),
        "samples_seen": float(state.samples_seen),
        "train_seconds": clock.train_s,
        # CPU seconds of all threads: a throughput measure that holds on a busy machine.
        "train_cpu_seconds": clock.train_cpu_s,
        "train_samples_per_second": clock.samples / max(clock.train_s, 1e-9),
        "orchestration_seconds": clock.overhead_s,
        "checkpoints_written": float(len(run.writer.written) if run.writer is not None else 0),
        "best_step": float(state.best_step),
        "stopped_early": float(state.stopped_early),
    }
    if state.best_metric is not None:
        metrics[f"best_{metric_name}"] = state.best_metric
    return LoopResult(state=state, metrics=metrics, precision=run.precision, device=str(run.device))


def track_best(
    state: TrainState,
    scores: dict[str, float],
    metric_name: str,
    settings: LoopSettings,
) -> bool:
    """Update the best scores and early-stopping counters from one evaluation.

    Returns:
        Whether ``scores[metric_name]`` is a new best.
    """
    value = scores[metric_name]
    if state.best_metric is None or value > state.best_metric:
        state.best_metric, state.best_step, state.evals_without_improvement = value, state.step, 0
        state.best_scores = dict(scores)
        return True
    state.evals_without_improvement += 1
    patience = settings.early_stopping_patience
    if patience is not None and state.evals_without_improvement >= patience:
        state.stopped_early = True
        logger.info("early stopping at step %d (best at step %d)", state.step, state.best_step)
    return False


def train_step(
    model: nn.Module,
    ddp: nn.parallel.DistributedDataParallel | None,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    source: BatchSource,
    stream: Iterator[tuple[int, int, list[int]]],
    state: TrainState,
    settings: LoopSettings,
    precision: Precision,
    device: torch.device,
    embedding_gradient: SparseEmbeddingGradient | None = None,
) -> tuple[float, float, int]:
    """One optimiser step over ``grad_accum_steps`` micro-batches, gradients clipped.

    ``embedding_gradient``, when given, clips and densifies the sparse word-embedding
    gradient (see ``components.cpu_speedups``).

    Returns:
        (mean loss, gradient norm before clipping, examples processed on this rank).
    """
    total_loss, samples = 0.0, 0
    accum = settings.grad_accum_steps
    for micro in range(accum):
        epoch, position, indices = next(stream)
        batch = move_to(source.collate(indices, state.step * accum + micro), device)
        # DDP all-reduces gradients only on the last micro-batch of an accumulation.
        skip_sync = ddp is not None and micro < accum - 1
        with (
            ddp.no_sync() if skip_sync and ddp is not None else nullcontext(),
            torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16"),
        ):
            loss = model(**batch).loss / accum
        loss.backward()
        total_loss += float(loss.detach())
        samples += len(indices)
        state.epoch, state.batch_in_epoch = epoch, position + 1
    if not math.isfinite(total_loss):
        raise TrainingError(
            f"loss became {total_loss} at step {state.step}: lower the learning rate"
        )
    if embedding_gradient is not None:
        grad_norm = embedding_gradient.clip_and_densify(model, settings.max_grad_norm)
    else:
        grad_norm = float(
            torch.nn.utils.clip_grad_norm_(model.parameters(), settings.max_grad_norm)
        )
    if not math.isfinite(grad_norm):
        # Stop before the update turns the weights into NaN (the checkpoints keep the
        # last finite state).
        raise TrainingError(
            f"the gradient norm became {grad_norm} at step {state.step}: lower the learning "
            "rate or check the data"
        )
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    if embedding_gradient is not None:
        embedding_gradient.clear()
    return total_loss, grad_norm, samples
