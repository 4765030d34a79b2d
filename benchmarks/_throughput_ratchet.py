"""Ratchet's side of ``benchmarks/train_throughput.py``: ``run_finetuning`` bare, and as
the flow runs it (a Prefect task, per-step MLflow logging, checkpoints), and the
figures read off its batches (padded tokens) and its model (dev accuracy).
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from benchmarks._throughput_baselines import (
    LABELS,
    LR,
    PROJECT_ROOT,
    SEED,
    WARMUP_FRACTION,
    WEIGHT_DECAY,
)
from components.base_model import shipped_model_dir
from components.config import load_config
from components.finetune import run_finetuning
from components.finetune_run import encode_texts, evaluate_accuracy
from components.prepare import PreparedData
from components.training.batching import length_grouped_batches


def ratchet_config(
    steps: int,
    batch_size: int,
    max_length: int,
    checkpoint_every: int | None,
    extra_overrides: tuple[str, ...] = (),
) -> Any:
    """The shipped params.yaml with the benchmark's shared settings; ``checkpoint_every``
    None keeps the shipped checkpoint cadence, a number replaces it with that step count."""
    cadence = (
        []
        if checkpoint_every is None
        else [
            f"train.checkpoint_every_steps={checkpoint_every}",
            "train.checkpoint_every_minutes=null",
        ]
    )
    return load_config(
        PROJECT_ROOT / "params.yaml",
        overrides=[
            f"train.max_steps={steps}",
            "train.epochs=100",
            f"train.batch_size={batch_size}",
            f"model.max_length={max_length}",
            f"train.lr={LR}",
            f"train.weight_decay={WEIGHT_DECAY}",
            f"train.warmup_fraction={WARMUP_FRACTION}",
            f"train.seed={SEED}",
            f"train.eval_every_steps={steps}",
            "train.early_stopping_patience=null",
            "train.max_train_samples=null",
            *cadence,
            *extra_overrides,
        ],
    )


def run_ratchet_bare(
    train: pd.DataFrame,
    dev: pd.DataFrame,
    steps: int,
    batch_size: int,
    max_length: int,
    extra_overrides: tuple[str, ...] = (),
) -> dict[str, Any]:
    """run_finetuning alone: no Prefect, no MLflow, no checkpoints (the overhead baseline),
    with ``extra_overrides`` applied for a ``--variant``."""
    workdir = Path(tempfile.mkdtemp(prefix="bench-ratchet-bare-"))
    config = ratchet_config(steps, batch_size, max_length, steps, extra_overrides)
    data = PreparedData(train=train, validation=dev, test=dev, labels=LABELS)
    step_seconds: list[float] = []

    def record_step(step: int, metrics: dict[str, float]) -> None:
        step_seconds.append(batch_size / metrics["samples_per_second"])

    start = time.perf_counter()
    result = run_finetuning(
        config, data, str(shipped_model_dir()), workdir / "model", on_metrics=record_step
    )
    # The second half of the steps: past torch.compile's first compilations and
    # recompilations for new sequence lengths, so compiled and eager compare steady states.
    second_half = step_seconds[len(step_seconds) // 2 :]
    return {
        "result": result,
        "wall_seconds": time.perf_counter() - start,
        "steady_samples_per_second": batch_size * len(second_half) / sum(second_half),
    }


def run_ratchet_orchestrated(
    train: pd.DataFrame,
    dev: pd.DataFrame,
    steps: int,
    batch_size: int,
    max_length: int,
    checkpoint_every: int | None,
) -> dict[str, Any]:
    """run_finetuning as the flow runs it: a Prefect task inside a flow, an MLflow run with
    per-step metrics logged in batches, and atomic checkpoints every ``checkpoint_every``
    steps (None: at the shipped cadence). Returns the task's wall time and its parts."""
    workdir = Path(tempfile.mkdtemp(prefix="bench-ratchet-"))
    config = ratchet_config(steps, batch_size, max_length, checkpoint_every)
    data = PreparedData(train=train, validation=dev, test=dev, labels=LABELS)
    base = str(shipped_model_dir())
    os.environ.setdefault("PREFECT_HOME", str(workdir / "prefect"))
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{workdir / 'mlflow.db'}"
    import mlflow
    from prefect import flow, task

    from components import tracking

    # Creating a new store (schema migrations) happens once per store, not per training
    # run; it is timed and reported on its own.
    store_start = time.perf_counter()
    mlflow.set_experiment("bench")
    timings: dict[str, float] = {"store_creation": time.perf_counter() - store_start}

    @task(name="train")
    def train_task() -> Any:
        mlflow_start = time.perf_counter()
        with mlflow.start_run(run_name="bench-train") as run:
            timings["mlflow"] = time.perf_counter() - mlflow_start
            with tracking.metrics_logger(run.info.run_id) as on_metrics:
                inner_start = time.perf_counter()
                result = run_finetuning(
                    config, data, base, workdir / "model", workdir / "checkpoints", on_metrics
                )
                timings["inner"] = time.perf_counter() - inner_start
                flush_start = time.perf_counter()
            timings["mlflow"] += time.perf_counter() - flush_start
        return result

    @flow(name="bench-train")
    def train_flow() -> Any:
        task_start = time.perf_counter()
        result = train_task()
        timings["task"] = time.perf_counter() - task_start
        return result

    flow_start = time.perf_counter()
    result = train_flow()
    flow_seconds = time.perf_counter() - flow_start
    return {
        "result": result,
        "wall_seconds": timings["task"],
        "wrapper_seconds": timings["task"] - timings["inner"] - timings["mlflow"],
        "mlflow_seconds": timings["mlflow"],
        "store_creation_seconds": timings["store_creation"],
        # Starting the ephemeral API server and the flow run: once per retrain, and
        # absent against a running Prefect server.
        "flow_startup_seconds": flow_seconds - timings["task"],
    }


def loop_samples_per_second(metrics: dict[str, Any]) -> float:
    """Samples per second of Ratchet's loop, steps and in-loop orchestration included
    (evaluation excluded, as the Trainer's ``train_samples_per_second`` excludes it)."""
    return metrics["samples_seen"] / (metrics["train_seconds"] + metrics["orchestration_seconds"])


def padded_tokens_of_our_batches(
    train: pd.DataFrame, steps: int, batch_size: int, max_length: int
) -> tuple[float, float]:
    """(padded, real) tokens per example that Ratchet's loop processes in ``steps`` steps."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(shipped_model_dir()))
    lengths = [len(ids) for ids in encode_texts(tokenizer, train["text"].tolist(), max_length)]
    batches: list[list[int]] = []
    epoch = 0
    while len(batches) < steps:
        batches += length_grouped_batches(lengths, batch_size, SEED, epoch)
        epoch += 1
    batches = batches[:steps]
    examples = sum(len(b) for b in batches)
    padded = sum(len(b) * max(lengths[i] for i in b) for b in batches)
    real = sum(lengths[i] for b in batches for i in b)
    return padded / examples, real / examples


def dev_accuracy(model: torch.nn.Module, dev: pd.DataFrame, max_length: int) -> float:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(shipped_model_dir()))
    encoded = encode_texts(tokenizer, dev["text"].tolist(), max_length)
    model = model.float().to("cpu")
    scores = evaluate_accuracy(model, encoded, dev["label"].tolist(), 64, tokenizer.pad_token_id)
    return scores["val_accuracy"]
