"""Where and how a training run computes: processes, device, precision, seeds.

torch.distributed (DDP) setup when launched by ``torchrun``, the device of this process,
the precision a run trains in (decided once and kept for a resume), and the seeds and RNG
states an exact resume restores.
"""

from __future__ import annotations

import logging
import os
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from components.files import write_atomically
from components.hardware import cpu_has_native_bf16

logger = logging.getLogger(__name__)

Precision = Literal["fp32", "bf16"]


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
                write_atomically(recorded, precision)
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


def all_ranks_rng(context: DistributedContext) -> list[dict[str, Any]]:
    """Every rank's RNG state (gathered to all ranks under DDP) for the checkpoint."""
    mine = capture_rng_state()
    if not context.enabled:
        return [mine]
    import torch.distributed as dist

    gathered: list[Any] = [None] * context.world_size
    dist.all_gather_object(gathered, mine)
    return gathered


def start_process(seed: int, deterministic: bool, num_threads: int | None) -> DistributedContext:
    """Start a training run's process: join the DDP group (under torchrun), set torch's
    thread count when ``num_threads`` is set, and seed everything."""
    context = init_distributed()
    if num_threads:
        torch.set_num_threads(num_threads)
    seed_everything(seed, deterministic)
    return context
