"""The training loop shared by MLM pretraining and classifier fine-tuning.

One loop, small pieces: device and precision choice, seeding, length-grouped batching,
dynamic padding, the linear warm-up/decay schedule, atomic checkpoints that hold
everything an exact resume needs (weights, optimiser, scheduler, RNG states, data
position, early-stopping counters), and torch.distributed (DDP) setup. It runs
unchanged on a laptop CPU, one GPU, or ``torchrun --nproc_per_node N``.

Exact resume works because the batch order is a pure function of (seed, epoch), any
per-step randomness other than dropout (MLM masking) is derived from (seed, step, rank),
and the global RNG states that drive dropout are saved with every checkpoint.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import math
import os
import random
import shutil
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import nullcontext, suppress
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from components.cpu_speedups import AppliedSpeedups, SparseEmbeddingGradient, apply_cpu_speedups
from components.errors import TrainingError
from components.logs import progress_disabled

logger = logging.getLogger(__name__)

MetricsCallback = Callable[[int, dict[str, float]], None]
"""``on_metrics(step, metrics)``: per-step loss, lr, grad_norm, samples_per_second, and
validation metrics (``val_*``) when evaluated. The tracking layer connects it to MLflow."""

Precision = Literal["fp32", "bf16"]
CHECKPOINT_PREFIX = "step-"
KEEP_CHECKPOINTS = 2
# Trainer's LengthGroupedSampler uses megabatches of 50 batches; bigger ones pad less but
# make batch contents less random.
MEGABATCH_FACTOR = 50


# --------------------------------------------------------------------------- runtime
@dataclass(frozen=True)
class DistributedContext:
    """Where this process sits in a torch.distributed job (world_size 1 when alone)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def init_distributed() -> DistributedContext:
    """Join the process group when launched by ``torchrun`` (WORLD_SIZE > 1), else no-op.

    The backend is NCCL on CUDA and gloo on CPU.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return DistributedContext()
    import torch.distributed as dist

    context = DistributedContext(
        rank=int(os.environ["RANK"]),
        world_size=world_size,
        local_rank=int(os.environ.get("LOCAL_RANK", "0")),
    )
    if not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(context.local_rank)
        dist.init_process_group(backend=backend)
    return context


def is_main_process() -> bool:
    """True outside torchrun and on its rank 0: the one process that writes outputs."""
    return int(os.environ.get("RANK", "0")) == 0


def choose_device(context: DistributedContext | None = None) -> torch.device:
    """CUDA (this process's local GPU) when available, otherwise the CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda", (context or DistributedContext()).local_rank)
    return torch.device("cpu")


def cpu_has_native_bf16() -> bool:
    """True when the CPU has bf16 instructions (AVX512-BF16 or AMX); without them oneDNN
    emulates bf16 and it is many times slower than fp32."""
    try:
        flags = Path("/proc/cpuinfo").read_text(encoding="utf-8")
    except OSError:
        flags = ""
    if "avx512_bf16" in flags or "amx_bf16" in flags:
        return True
    checker = getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", None)
    return bool(checker and checker() and "avx512" in flags)


def bf16_speedup_on_cpu(size: int = 512, repeats: int = 5) -> float:
    """Measured fp32 time / bf16-autocast time of a linear layer shaped like a BERT FFN."""
    layer = nn.Linear(size, 4 * size)
    inputs = torch.randn(4 * size, size)

    def timed(enabled: bool) -> float:
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=enabled):
            layer(inputs)
            start = time.perf_counter()
            for _ in range(repeats):
                layer(inputs)
        return time.perf_counter() - start

    return timed(False) / timed(True)


def choose_precision(setting: str, device: torch.device, measure: bool = True) -> Precision:
    """Resolve ``train.precision``: fp32 weights always, bf16 autocast when it pays.

    ``auto`` picks bf16 on CUDA devices that support it, and on CPUs with native bf16
    where a quick measurement shows bf16 autocast is faster than fp32 (with ``measure``
    off: on every CPU with native bf16).
    """
    if setting in ("fp32", "bf16"):
        return setting  # type: ignore[return-value]
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    if device.type == "cpu" and cpu_has_native_bf16():
        if not measure:
            return "bf16"
        speedup = bf16_speedup_on_cpu()
        logger.info("bf16 autocast on this CPU: %.2fx fp32 speed", speedup)
        return "bf16" if speedup > 1.2 else "fp32"
    return "fp32"


PRECISION_FILE = "precision.txt"


def run_precision(
    setting: str,
    device: torch.device,
    deterministic: bool = False,
    checkpoint_dir: Path | None = None,
    context: DistributedContext | None = None,
) -> Precision:
    """Resolve ``train.precision`` once for a run: the same on every rank and after a resume.

    ``auto`` times bf16 against fp32 on a CPU with native bf16, and on a busy machine the
    timing can come out either way. So rank 0 decides and tells the others, the decision
    is kept in ``checkpoint_dir`` for a resumed run, and a deterministic run decides by
    the CPU's features alone.
    """
    context = context or DistributedContext()
    recorded = checkpoint_dir / PRECISION_FILE if checkpoint_dir is not None else None
    precision: Precision = "fp32"
    if context.is_main:
        if recorded is not None and recorded.is_file():
            precision = "bf16" if recorded.read_text().strip() == "bf16" else "fp32"
        else:
            precision = choose_precision(setting, device, measure=not deterministic)
            if recorded is not None:
                recorded.parent.mkdir(parents=True, exist_ok=True)
                partial = recorded.with_name(f".tmp-{PRECISION_FILE}")
                partial.write_text(precision)
                partial.replace(recorded)
    if context.enabled:
        precision = broadcast_from_main(precision)
    return precision


def broadcast_from_main(value: Any) -> Any:
    """Rank 0's ``value`` on every rank (a collective: every rank must call it)."""
    import torch.distributed as dist

    holder = [value]
    dist.broadcast_object_list(holder, src=0)
    return holder[0]


def seed_everything(seed: int, deterministic: bool = False) -> None:
    """Seed python, numpy and torch (all devices); optionally force deterministic kernels."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False


def capture_rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# --------------------------------------------------------------------------- batching
def length_grouped_batches(
    lengths: Sequence[int],
    batch_size: int,
    seed: int,
    epoch: int,
    grouped: bool = True,
    context: DistributedContext | None = None,
) -> list[list[int]]:
    """This rank's batches of example indices for one epoch: a pure function of the inputs.

    Indices are shuffled with (seed, epoch); when ``grouped``, each megabatch of
    ``50 * batch_size`` is sorted by length before being cut, so a batch holds texts of
    similar length and dynamic padding wastes little. Batch order is shuffled again so
    long and short batches alternate. Under DDP the batch list is cut to a multiple of
    the world size and dealt round-robin, so every rank takes the same number of steps.
    """
    if batch_size < 1:
        raise TrainingError(f"batch size must be at least 1, got {batch_size}")
    context = context or DistributedContext()
    rng = np.random.default_rng([seed, epoch])
    order = rng.permutation(len(lengths))
    if grouped:
        megabatch = batch_size * MEGABATCH_FACTOR
        order = np.concatenate(
            [
                chunk[np.argsort([-lengths[i] for i in chunk], kind="stable")]
                for chunk in np.split(order, range(megabatch, len(order), megabatch))
            ]
        )
    batches = [order[i : i + batch_size].tolist() for i in range(0, len(order), batch_size)]
    if grouped:
        batches = [batches[i] for i in rng.permutation(len(batches))]
    usable = len(batches) - len(batches) % context.world_size
    return batches[context.rank : usable : context.world_size]


def pad_batch(
    sequences: Sequence[Sequence[int]], pad_id: int, multiple_of: int = 1
) -> dict[str, torch.Tensor]:
    """Pad token-id lists to the longest in the batch (dynamic padding)."""
    longest = max(len(ids) for ids in sequences)
    longest = math.ceil(longest / multiple_of) * multiple_of
    input_ids = torch.full((len(sequences), longest), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(sequences), longest), dtype=torch.long)
    for row, ids in enumerate(sequences):
        input_ids[row, : len(ids)] = torch.as_tensor(ids, dtype=torch.long)
        attention_mask[row, : len(ids)] = 1
    return {"input_ids": input_ids, "attention_mask": attention_mask}


def linear_schedule(
    optimizer: torch.optim.Optimizer, warmup_steps: int, total_steps: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up from 0 to the peak LR over ``warmup_steps``, then linear decay to 0."""

    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: linear_lr_factor(step, warmup_steps, total_steps)
    )


def linear_lr_factor(step: int, warmup_steps: int, total_steps: int) -> float:
    if step < warmup_steps:
        return (step + 1) / (warmup_steps + 1)
    remaining = max(total_steps - warmup_steps, 1)
    return max(0.0, (total_steps - step) / remaining)


def build_optimizer(
    model: nn.Module,
    lr: float,
    weight_decay: float,
    device: torch.device,
    lr_scales: Mapping[str, float] | None = None,
) -> torch.optim.AdamW:
    """AdamW without decay on biases and LayerNorm weights (BERT recipe); fused kernel
    where torch has one for the device.

    ``lr_scales`` multiplies the learning rate per parameter name (1 where absent), e.g.
    layer-wise decay. Groups are ordered by falling rate, decayed before not decayed, so
    the order (which a resumed optimiser state relies on) is fixed and group 0 carries
    the peak rate.
    """
    groups: dict[tuple[float, bool], list[nn.Parameter]] = {}
    for name, parameter in model.named_parameters():
        if not parameter.requires_grad:
            continue
        no_decay = parameter.ndim < 2 or "LayerNorm" in name
        scale = lr_scales.get(name, 1.0) if lr_scales is not None else 1.0
        groups.setdefault((scale, no_decay), []).append(parameter)
    ordered = sorted(groups.items(), key=lambda item: (-item[0][0], item[0][1]))
    return torch.optim.AdamW(
        [
            {"params": params, "lr": lr * scale, "weight_decay": 0.0 if no_decay else weight_decay}
            for (scale, no_decay), params in ordered
        ],
        lr=lr,
        fused=device.type in ("cuda", "cpu"),
    )


# --------------------------------------------------------------------------- checkpoints
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
    """Write a checkpoint atomically: into a temporary folder, fsync, then ``os.replace``
    it to ``step-NNNNNNNN``. A kill at any moment leaves either the old or the new
    checkpoint, never half of one. Older checkpoints beyond the last two are removed."""
    checkpoint_dir.mkdir(parents=True, exist_ok=True)
    final = checkpoint_dir / f"{CHECKPOINT_PREFIX}{state.step:08d}"
    partial = checkpoint_dir / f".tmp-{final.name}-{os.getpid()}"
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir()
    torch.save(payload, partial / "checkpoint.pt")
    (partial / "state.json").write_text(json.dumps(asdict(state)), encoding="utf-8")
    with open(partial / "checkpoint.pt", "rb") as handle:
        os.fsync(handle.fileno())
    if final.exists():
        shutil.rmtree(final)
    os.replace(partial, final)
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


# --------------------------------------------------------------------------- the loop
class BatchSource(Protocol):
    """What the loop needs from a data set: per-epoch batches and a collate function."""

    def epoch_batches(self, epoch: int) -> list[list[int]]:
        """This rank's batches of example indices for ``epoch`` (pure in seed and epoch)."""
        ...

    def collate(self, indices: list[int], step: int) -> dict[str, torch.Tensor]:
        """Model inputs (with labels) for one micro-batch at optimiser step ``step``."""
        ...


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


def micro_batches(source: BatchSource, state: TrainState) -> Iterator[tuple[int, int, list[int]]]:
    """Endless (epoch, position, indices) stream starting at the saved data position."""
    epoch, position = state.epoch, state.batch_in_epoch
    while True:
        batches = source.epoch_batches(epoch)
        if not batches:
            raise TrainingError("the training data yields no batch (too few examples?)")
        while position < len(batches):
            yield epoch, position, batches[position]
            position += 1
        epoch, position = epoch + 1, 0


def move_to(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    return {key: value.to(device, non_blocking=True) for key, value in batch.items()}


def all_ranks_rng(context: DistributedContext) -> list[dict[str, Any]]:
    """Every rank's RNG state (gathered to all ranks under DDP) for the checkpoint."""
    mine = capture_rng_state()
    if not context.enabled:
        return [mine]
    import torch.distributed as dist

    gathered: list[Any] = [None] * context.world_size
    dist.all_gather_object(gathered, mine)
    return gathered


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
    context = context or DistributedContext()
    device = choose_device(context)
    precision = choose_precision(settings.precision, device)
    model.to(device)
    optimizer = build_optimizer(model, settings.lr, settings.weight_decay, device, lr_scales)
    warmup = int(settings.warmup_fraction * settings.total_steps)
    scheduler = linear_schedule(optimizer, warmup, settings.total_steps)
    state, best_weights = TrainState(world_size=context.world_size), None
    resumed = load_latest_checkpoint(checkpoint_dir)
    if resumed is not None:
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
        best_weights = payload["best_weights"]
        restore_rng_state(payload["rng"][context.rank])
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
    stream = micro_batches(source, state)
    bar = tqdm(
        total=settings.total_steps,
        initial=state.step,
        desc=settings.description,
        disable=progress_disabled() or not context.is_main,
        dynamic_ncols=True,
    )
    overhead_s, train_s, train_cpu_s, run_samples = 0.0, 0.0, 0.0, 0
    writer = CheckpointWriter(checkpoint_dir) if checkpoint_dir is not None else None
    schedule = CheckpointSchedule(
        settings.checkpoint_every_steps, settings.checkpoint_every_minutes, context, device
    )
    speedups = (
        apply_cpu_speedups(model, sparse_embedding=not context.enabled)
        if settings.cpu_speedups and device.type == "cpu" and not settings.compile
        else AppliedSpeedups()
    )
    model.train()
    try:
        while state.step < settings.total_steps and not state.stopped_early:
            step_start, step_cpu_start = time.perf_counter(), time.process_time()
            step_lr = float(scheduler.get_last_lr()[0])  # the rate this step trains at
            loss, grad_norm, samples = train_step(
                trained,
                ddp,
                optimizer,
                scheduler,
                source,
                stream,
                state,
                settings,
                precision,
                device,
                speedups.embedding_gradient,
            )
            samples *= context.world_size
            state.step += 1
            state.samples_seen += samples
            state.loss_sum += loss
            state.loss_count += 1
            run_samples += samples
            step_seconds = time.perf_counter() - step_start
            train_s += step_seconds
            train_cpu_s += time.process_time() - step_cpu_start
            step_metrics: dict[str, float] = {
                "loss": loss,
                "lr": step_lr,
                "grad_norm": grad_norm,
                "samples_per_second": samples / max(step_seconds, 1e-9),
            }
            is_last = state.step >= settings.total_steps
            if evaluate is not None and (
                is_last
                or (settings.eval_every_steps and state.step % settings.eval_every_steps == 0)
            ):
                scores = evaluate(model)
                model.train()
                step_metrics.update(scores)
                state.last_scores = dict(scores)
                improved = track_best(state, scores, metric_name, settings)
                # Every rank keeps a copy, so all ranks end with the same weights.
                if improved and settings.keep == "best":
                    best_weights = detached_copy(model.state_dict())
            orchestration_start = time.perf_counter()
            if on_metrics is not None and context.is_main:
                on_metrics(state.step, dict(step_metrics))
            bar.update(1)
            bar.set_postfix(loss=f"{loss:.4f}", samples_s=f"{run_samples / max(train_s, 1e-9):.0f}")
            finishing = is_last or state.stopped_early
            if writer is not None and not finishing and schedule.due(state.step):
                rng_states = all_ranks_rng(context)
                if context.is_main:
                    payload = checkpoint_payload(
                        model, optimizer, scheduler, rng_states, best_weights
                    )
                    writer.submit(payload, state)
                schedule.written()
            overhead_s += time.perf_counter() - orchestration_start
    except BaseException:
        # Let a checkpoint already being written land, so the crash loses as little as
        # possible; the original error is the one worth reporting.
        if writer is not None:
            with suppress(TrainingError):
                writer.wait()
        raise
    finally:
        speedups.undo()
    bar.close()
    if writer is not None:
        wait_start = time.perf_counter()
        writer.wait()
        overhead_s += time.perf_counter() - wait_start
    if best_weights is not None:
        model.load_state_dict(best_weights)
    metrics = {
        "train_loss": state.loss_sum / max(state.loss_count, 1),
        "steps": float(state.step),
        "samples_seen": float(state.samples_seen),
        "train_seconds": train_s,
        # CPU seconds of all threads: a throughput measure that holds on a busy machine.
        "train_cpu_seconds": train_cpu_s,
        "train_samples_per_second": run_samples / max(train_s, 1e-9),
        "orchestration_seconds": overhead_s,
        "checkpoints_written": float(len(writer.written) if writer is not None else 0),
        "best_step": float(state.best_step),
        "stopped_early": float(state.stopped_early),
    }
    if state.best_metric is not None:
        metrics[f"best_{metric_name}"] = state.best_metric
    return LoopResult(state=state, metrics=metrics, precision=precision, device=str(device))


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


def clear_checkpoints(checkpoint_dir: Path) -> None:
    """Remove a finished run's checkpoints, so the next run of the command starts fresh."""
    for found in [*list_checkpoints(checkpoint_dir), *checkpoint_dir.glob(".tmp-*")]:
        shutil.rmtree(found, ignore_errors=True)
    (checkpoint_dir / PRECISION_FILE).unlink(missing_ok=True)
    (checkpoint_dir / RUN_KEY_FILE).unlink(missing_ok=True)


# When checkpoints are written does not change what a run computes: a crashed run still
# resumes after these were changed (say, to checkpoint less often).
CADENCE_KEYS = ("checkpoint_every_steps", "checkpoint_every_minutes")
RUN_KEY_FILE = "run_key.txt"


def run_key(config: Any, paths: Any, *fingerprints: str) -> str:
    """Checkpoint folder key: the config sections and prepared data a run depends on,
    plus ``fingerprints`` of its other inputs (the init model's, the corpora's).
    A changed setting, data set or init model starts fresh instead of resuming a
    different run."""
    manifest = paths.prepared_dir / "manifest.json"
    data_stamp = hashlib.sha256(manifest.read_bytes() if manifest.is_file() else b"")
    return resume_key(config, data_stamp.hexdigest(), *fingerprints)[:12]


def resume_key(config: Any, *fingerprints: str) -> str:
    """What a run computes from: the config sections training reads (less checkpoint
    cadence) and content fingerprints of its data and init model. Recorded in the
    checkpoint folder, so a resume can check it continues the same run."""
    sections = config.section_hash(
        "data", "model", "pretrain", "train", leave_out={"train": CADENCE_KEYS}
    )
    digest = hashlib.sha256(sections.encode())
    for fingerprint in fingerprints:
        digest.update(b"\x00" + fingerprint.encode())
    return digest.hexdigest()[:16]


def claim_checkpoint_dir(checkpoint_dir: Path | None, key: str) -> None:
    """Make sure ``checkpoint_dir`` resumes only the run whose :func:`resume_key` is ``key``.

    A new or empty folder records ``key``; a folder holding progress (checkpoints, a
    recorded precision, a soup's members) must record the same key.

    Raises:
        TrainingError: the folder holds progress of another run, or progress that
            records no key; it names both keys and the folder to delete.
    """
    if checkpoint_dir is None:
        return
    recorded_file = checkpoint_dir / RUN_KEY_FILE
    recorded = recorded_file.read_text().strip() if recorded_file.is_file() else None
    progress = (
        [entry for entry in checkpoint_dir.iterdir() if entry.name != RUN_KEY_FILE]
        if checkpoint_dir.is_dir()
        else []
    )
    if progress and recorded != key:
        raise TrainingError(
            f"the checkpoints in {checkpoint_dir} were written by another run (its key is "
            f"{recorded or 'not recorded'}, this run's is {key}: different data, settings "
            f"or init model); resuming them would train the wrong model. Delete "
            f"{checkpoint_dir} to start this run from scratch"
        )
    if recorded != key and is_main_process():
        checkpoint_dir.mkdir(parents=True, exist_ok=True)
        partial = checkpoint_dir / f".tmp-{RUN_KEY_FILE}"
        partial.write_text(key)
        partial.replace(recorded_file)


def write_metrics(path: Path, metrics: dict[str, float], info: dict[str, str]) -> None:
    """The stage's metrics JSON (the file DVC declares), written atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".json.tmp")
    payload = {**{k: round(v, 6) for k, v in metrics.items()}, "info": info}
    partial.write_text(json.dumps(payload, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    os.replace(partial, path)
