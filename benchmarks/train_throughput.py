"""Fine-tuning throughput of Ratchet's loop against two plain Hugging Face Trainer baselines.

    .venv/bin/python benchmarks/train_throughput.py               # 8,000 rows, batch 32, 1 epoch
    .venv/bin/python benchmarks/train_throughput.py --rows 2000 --baseline-a-steps 20
    .venv/bin/python benchmarks/train_throughput.py --rounds 3 --baseline-a-steps 60 \
        --variant train.cpu_speedups=false --variant train.freeze_embeddings=true

Same model (the shipped MiniLM), same SST-2 training slice, same batch size, same number
of optimiser steps, same optimiser settings, one invocation:

* (a) Trainer, every example padded to max_length 128, fp32 (the HF text-classification
  example's default);
* (b) Trainer with dynamic padding (``DataCollatorWithPadding``), length-grouped sampling
  and ``bf16=True`` where the CPU has native bf16: the best plain-Trainer setup;
* Ratchet's ``run_finetuning`` with its shipped defaults, twice: bare, and as the flow runs
  it (a Prefect task, per-step MLflow logging, checkpoints), so the orchestration
  overhead is measured both by accounting and end to end;
* optionally more bare Ratchet runs with other settings (``--variant``), e.g.
  ``train.cpu_speedups=false`` for the loop without its CPU shortcuts.

``--rounds N`` runs (b), Ratchet bare, the variants and Ratchet orchestrated in turn N
times and reports medians of the per-round ratios: this VM's speed drifts by tens of
percent over minutes, and a ratio of two runs far apart in time measures the drift.

Prints samples/s of each, the two ratios, SST-2 validation accuracy after the same steps,
the achieved FLOP/s as a fraction of this machine's measured matmul peak (bf16 and fp32),
and the orchestration share of the training time. A benchmark, not a test.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import pandas as pd
import torch

PROJECT_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT_ROOT))

from components.base_model import shipped_model_dir  # noqa: E402
from components.config import load_config  # noqa: E402
from components.finetune import run_finetuning  # noqa: E402
from components.finetune_run import encode_texts, evaluate_accuracy  # noqa: E402
from components.hardware import cpu_has_native_bf16  # noqa: E402
from components.logs import progress_disabled, setup_logging  # noqa: E402
from components.prepare import PreparedData  # noqa: E402
from components.state import QUIET_ENVIRONMENT  # noqa: E402
from components.training.batching import length_grouped_batches  # noqa: E402

SST2 = PROJECT_ROOT.parent / "shared" / "data" / "sst2"
LABELS = ["negative", "positive"]
LR, WEIGHT_DECAY, WARMUP_FRACTION, SEED = 5e-5, 0.01, 0.06, 42


def load_sst2(rows: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """A seeded slice of SST-2 train and the full dev set, as prepared-data frames."""
    train = pd.read_csv(SST2 / "train.tsv", sep="\t", quoting=3)
    dev = pd.read_csv(SST2 / "dev.tsv", sep="\t", quoting=3)
    frames = []
    for frame in (train.sample(n=rows, random_state=SEED), dev):
        frame = frame.rename(columns={"sentence": "text"}).reset_index(drop=True)
        frame["text"] = frame["text"].str.strip()
        frame["label_name"] = [LABELS[label] for label in frame["label"]]
        frames.append(frame)
    return frames[0], frames[1]


def matmul_peak_flops(dtype: torch.dtype, size: int = 1536, seconds: float = 2.0) -> float:
    """Measured dense matmul FLOP/s for ``dtype`` on this machine."""
    left, right = torch.randn(size, size, dtype=dtype), torch.randn(size, size, dtype=dtype)
    left @ right
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        left @ right
        count += 1
    return 2 * size**3 * count / (time.perf_counter() - start)


def training_flops_per_token(config: Any, sequence_length: float) -> float:
    """fwd+bwd FLOPs per processed token: 6 x non-embedding weights + attention scores."""
    hidden, layers = config.hidden_size, config.num_hidden_layers
    weights = layers * (4 * hidden * hidden + 2 * hidden * config.intermediate_size)
    weights += hidden * hidden  # pooler
    return 6 * weights + 12 * layers * sequence_length * hidden


def require_accelerate() -> None:
    """The Trainer baselines need ``accelerate``, an optional extra (Ratchet's own loop
    does not): stop with the install command before any run starts."""
    try:
        import accelerate  # noqa: F401
    except ImportError:
        sys.exit(
            "benchmarks/train_throughput.py: the Hugging Face Trainer baselines need "
            "accelerate, which Ratchet itself does not; install the benchmark extra:\n"
            "    .venv/bin/pip install --constraint constraints.txt --editable '.[bench]'"
        )


def run_trainer_baseline(
    name: str, train: pd.DataFrame, steps: int, batch_size: int, max_length: int, padded: bool
) -> dict[str, Any]:
    """A plain Trainer run; (a) pads to max_length, (b) pads dynamically, length-grouped."""
    from transformers import (
        AutoModelForSequenceClassification,
        AutoTokenizer,
        DataCollatorWithPadding,
        Trainer,
        TrainingArguments,
        default_data_collator,
    )

    base = str(shipped_model_dir())
    tokenizer = AutoTokenizer.from_pretrained(base)
    encoded = tokenizer(
        train["text"].tolist(),
        truncation=True,
        max_length=max_length,
        padding="max_length" if padded else False,
    )
    dataset = [
        {**{key: encoded[key][i] for key in encoded}, "labels": int(label)}
        for i, label in enumerate(train["label"])
    ]
    torch.manual_seed(SEED)
    model = AutoModelForSequenceClassification.from_pretrained(base, num_labels=2)
    bf16 = (not padded) and (torch.cuda.is_available() or cpu_has_native_bf16())
    arguments = TrainingArguments(
        output_dir=tempfile.mkdtemp(prefix=f"bench-{name}-"),
        per_device_train_batch_size=batch_size,
        max_steps=steps,
        learning_rate=LR,
        weight_decay=WEIGHT_DECAY,
        warmup_steps=int(WARMUP_FRACTION * steps),
        max_grad_norm=1.0,
        lr_scheduler_type="linear",
        seed=SEED,
        bf16=bf16,
        use_cpu=not torch.cuda.is_available(),  # the Trainer refuses CPU bf16 without it
        train_sampling_strategy="random" if padded else "group_by_length",
        save_strategy="no",
        report_to="none",
        logging_steps=max(steps, 1),
        disable_tqdm=progress_disabled(),
        dataloader_pin_memory=False,
    )
    trainer = Trainer(
        model=model,
        args=arguments,
        train_dataset=dataset,  # type: ignore[arg-type]
        data_collator=default_data_collator if padded else DataCollatorWithPadding(tokenizer),
        processing_class=tokenizer,
    )
    cpu_start = time.process_time()
    output = trainer.train()
    cpu_seconds = time.process_time() - cpu_start
    lengths = [len(ids) for ids in encoded["input_ids"]]
    return {
        "name": name,
        "samples_per_second": output.metrics["train_samples_per_second"],
        "train_seconds": output.metrics["train_runtime"],
        "samples_per_cpu_second": steps * batch_size / cpu_seconds,
        "model": trainer.model,
        "bf16": bf16,
        "mean_padded_length": float(max_length) if padded else None,
        "mean_length": sum(lengths) / len(lengths),
    }


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=8000, help="SST-2 training rows")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=None, help="default: one epoch")
    parser.add_argument(
        "--baseline-a-steps",
        type=int,
        default=None,
        help="steps for baseline (a), which is slow; default --steps. Its throughput is "
        "per step, so fewer steps still measure it (its accuracy is then not comparable).",
    )
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument(
        "--checkpoint-every",
        type=int,
        default=None,
        help="checkpoint the orchestrated run every N steps instead of at the shipped "
        "cadence (params.yaml: every 2 minutes of wall time)",
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="rounds of (b), Ratchet bare, the variants and Ratchet orchestrated, run in "
        "turn; ratios and the end-to-end overhead are medians over rounds, so a drift in "
        "the machine's speed reaches both sides of each ratio",
    )
    parser.add_argument(
        "--variant",
        action="append",
        default=[],
        metavar="KEY=VALUE[,KEY=VALUE]",
        help="also time a bare Ratchet run with these overrides, e.g. train.compile=true or "
        "train.freeze_embeddings=true; repeatable",
    )
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = parser.parse_args()
    require_accelerate()
    setup_logging(logging.WARNING)
    os.environ.setdefault("RATCHET_NO_PROGRESS", "1")
    for name, value in QUIET_ENVIRONMENT.items():  # telemetry off, as in the flow
        os.environ.setdefault(name, value)
    steps = args.steps or args.rows // args.batch_size
    a_steps = args.baseline_a_steps or steps
    train, dev = load_sst2(args.rows)
    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"torch {torch.__version__}, threads {torch.get_num_threads()}, "
        f"native bf16 {cpu_has_native_bf16()}, cuda {torch.cuda.is_available()}"
    )
    print(f"data: {args.rows} SST-2 train rows, batch {args.batch_size}, {steps} steps")

    def rate(run: dict[str, Any]) -> float:
        return loop_samples_per_second(run["result"].metrics)

    rounds: list[dict[str, Any]] = []
    baseline_b_accuracy = 0.0
    for index in range(args.rounds):
        b_run = run_trainer_baseline("b", train, steps, args.batch_size, args.max_length, False)
        b_model = b_run.pop("model")
        if index == 0:
            baseline_b_accuracy = dev_accuracy(b_model, dev, args.max_length)
        del b_model
        bare_run = run_ratchet_bare(train, dev, steps, args.batch_size, args.max_length)
        variant_runs = {
            variant: run_ratchet_bare(
                train,
                dev,
                steps,
                args.batch_size,
                args.max_length,
                tuple(item.strip() for item in variant.split(",") if item.strip()),
            )
            for variant in args.variant
        }
        ours_run = run_ratchet_orchestrated(
            train, dev, steps, args.batch_size, args.max_length, args.checkpoint_every
        )
        rounds.append({"b": b_run, "bare": bare_run, "variants": variant_runs, "ours": ours_run})
        print(
            f"round {index + 1}: (b) {b_run['samples_per_second']:.1f}, ratchet bare "
            f"{rate(bare_run):.1f}, orchestrated {rate(ours_run):.1f} samples/s"
            + "".join(f", {variant} {rate(run):.1f}" for variant, run in variant_runs.items())
        )
    # Accounting details come from the first round; rates and ratios are medians.
    bare, ours = rounds[0]["bare"], rounds[0]["ours"]
    result = ours["result"]
    metrics = result.metrics

    def median_rate(pick: Any) -> float:
        return statistics.median(pick(each) for each in rounds)

    ours_sps = median_rate(lambda each: rate(each["ours"]))
    bare_sps = median_rate(lambda each: rate(each["bare"]))
    ours_cpu = median_rate(
        lambda each: (
            each["ours"]["result"].metrics["samples_seen"]
            / each["ours"]["result"].metrics["train_cpu_seconds"]
        )
    )
    runs: dict[str, dict[str, Any]] = {
        "b": {
            "samples_per_second": median_rate(lambda each: each["b"]["samples_per_second"]),
            "samples_per_cpu_second": median_rate(lambda each: each["b"]["samples_per_cpu_second"]),
            "accuracy": baseline_b_accuracy,
            "bf16": rounds[0]["b"]["bf16"],
        }
    }
    ratio_b_each = [rate(each["ours"]) / each["b"]["samples_per_second"] for each in rounds]
    bare_ratio_b_each = [rate(each["bare"]) / each["b"]["samples_per_second"] for each in rounds]
    print(
        f"ratchet: {ours_sps:.1f} samples/s ({result.info['precision']}), "
        f"{metrics['checkpoints_written']:.0f} checkpoints written"
    )
    pairs = [(each["bare"], each["ours"]) for each in rounds]
    runs["a"] = run_trainer_baseline("a", train, a_steps, args.batch_size, args.max_length, True)
    runs["a"]["accuracy"] = dev_accuracy(runs["a"].pop("model"), dev, args.max_length)

    from transformers import AutoConfig

    model_config = AutoConfig.from_pretrained(str(shipped_model_dir()))
    padded_length, real_length = padded_tokens_of_our_batches(
        train, steps, args.batch_size, args.max_length
    )
    achieved = ours_sps * padded_length * training_flops_per_token(model_config, padded_length)
    peak_bf16 = matmul_peak_flops(torch.bfloat16)
    peak_fp32 = matmul_peak_flops(torch.float32)
    orchestration = (
        metrics["orchestration_seconds"] + ours["wrapper_seconds"] + ours["mlflow_seconds"]
    )
    # The same work without Prefect, MLflow and checkpoints, timed in the same process:
    # catches costs the accounting misses, such as the checkpoint thread slowing steps.
    end_to_end_each = [pair[1]["wall_seconds"] / pair[0]["wall_seconds"] - 1 for pair in pairs]
    end_to_end = statistics.median(end_to_end_each)
    figures = {
        "steps": steps,
        "baseline_a_steps": a_steps,
        "baseline_a_samples_per_second": runs["a"]["samples_per_second"],
        "baseline_b_samples_per_second": runs["b"]["samples_per_second"],
        "ratchet_samples_per_second": ours_sps,
        "ratio_vs_a": ours_sps / runs["a"]["samples_per_second"],
        "ratio_vs_b": statistics.median(ratio_b_each),
        "ratio_vs_b_each_round": ratio_b_each,
        "bare_ratio_vs_b": statistics.median(bare_ratio_b_each),
        "bare_ratio_vs_b_each_round": bare_ratio_b_each,
        "rounds": args.rounds,
        "baseline_a_samples_per_cpu_second": runs["a"]["samples_per_cpu_second"],
        "baseline_b_samples_per_cpu_second": runs["b"]["samples_per_cpu_second"],
        "ratchet_samples_per_cpu_second": ours_cpu,
        "cpu_ratio_vs_a": ours_cpu / runs["a"]["samples_per_cpu_second"],
        "cpu_ratio_vs_b": ours_cpu / runs["b"]["samples_per_cpu_second"],
        "baseline_a_accuracy": runs["a"]["accuracy"],
        "baseline_b_accuracy": runs["b"]["accuracy"],
        "ratchet_accuracy": metrics["val_accuracy"],
        "baseline_b_bf16": runs["b"]["bf16"],
        "ratchet_precision": result.info["precision"],
        "mean_real_tokens": real_length,
        "mean_padded_tokens_ratchet": padded_length,
        "achieved_tflops": achieved / 1e12,
        "peak_bf16_matmul_tflops": peak_bf16 / 1e12,
        "peak_fp32_matmul_tflops": peak_fp32 / 1e12,
        "fraction_of_bf16_peak": achieved / peak_bf16,
        "fraction_of_best_peak": achieved / max(peak_bf16, peak_fp32),
        "train_seconds": metrics["train_seconds"],
        "orchestration_seconds": orchestration,
        "in_loop_orchestration_seconds": metrics["orchestration_seconds"],
        "prefect_wrapper_seconds": ours["wrapper_seconds"],
        "mlflow_run_seconds": ours["mlflow_seconds"],
        "orchestration_fraction": orchestration / metrics["train_seconds"],
        "checkpoint_every_steps": args.checkpoint_every,
        "checkpoints_written_each_pair": [
            pair[1]["result"].metrics["checkpoints_written"] for pair in pairs
        ],
        "bare_wall_seconds": bare["wall_seconds"],
        "orchestrated_wall_seconds": ours["wall_seconds"],
        "end_to_end_overhead_fraction": end_to_end,
        "end_to_end_overhead_fraction_each_pair": end_to_end_each,
        "bare_accuracy": bare["result"].metrics["val_accuracy"],
        "mlflow_store_creation_seconds": ours["store_creation_seconds"],
        "flow_startup_seconds": ours["flow_startup_seconds"],
        "bare_steady_samples_per_second": bare["steady_samples_per_second"],
    }
    figures["bare_samples_per_second"] = bare_sps
    figures["variants"] = {}
    for variant in args.variant:
        variant_sps = median_rate(lambda each, v=variant: rate(each["variants"][v]))
        figures["variants"][variant] = {
            "samples_per_second": variant_sps,
            "ratio_vs_bare_each_round": [
                rate(each["variants"][variant]) / rate(each["bare"]) for each in rounds
            ],
            "steady_samples_per_second": median_rate(
                lambda each, v=variant: each["variants"][v]["steady_samples_per_second"]
            ),
            "ratio_vs_a": variant_sps / runs["a"]["samples_per_second"],
            "ratio_vs_b": statistics.median(
                rate(each["variants"][variant]) / each["b"]["samples_per_second"] for each in rounds
            ),
            "accuracy": rounds[0]["variants"][variant]["result"].metrics["val_accuracy"],
        }
    print(json.dumps(figures, indent=2))
    print(
        f"\nsamples/s  (a) {figures['baseline_a_samples_per_second']:.1f}   "
        f"(b) {figures['baseline_b_samples_per_second']:.1f}   "
        f"ratchet {ours_sps:.1f}\n"
        f"ratio      vs (a) {figures['ratio_vs_a']:.1f}x   vs (b) {figures['ratio_vs_b']:.2f}x"
        f" (median of {args.rounds} round(s): "
        f"{', '.join(f'{each:.2f}x' for each in ratio_b_each)})"
        f"   (per CPU-second: {figures['cpu_ratio_vs_a']:.1f}x, {figures['cpu_ratio_vs_b']:.2f}x)"
        f"; bare loop {bare_sps:.1f} samples/s, {figures['bare_ratio_vs_b']:.2f}x (b) "
        f"(rounds: {', '.join(f'{each:.2f}x' for each in bare_ratio_b_each)})\n"
        f"accuracy   (a) {figures['baseline_a_accuracy']:.4f} ({a_steps} steps)   "
        f"(b) {figures['baseline_b_accuracy']:.4f}   ratchet {figures['ratchet_accuracy']:.4f}\n"
        f"FLOP/s     {achieved / 1e9:.1f} GFLOP/s = {figures['fraction_of_bf16_peak']:.1%} of "
        f"bf16 matmul peak ({peak_bf16 / 1e9:.1f} GFLOP/s), "
        f"{figures['fraction_of_best_peak']:.1%} of the best peak (fp32 {peak_fp32 / 1e9:.1f})\n"
        f"overhead   orchestration {orchestration:.2f} s = "
        f"{figures['orchestration_fraction']:.1%} of {metrics['train_seconds']:.1f} s training "
        f"(in loop {metrics['orchestration_seconds']:.2f} s, Prefect task "
        f"{ours['wrapper_seconds']:.2f} s, MLflow run {ours['mlflow_seconds']:.2f} s); "
        f"end to end {ours['wall_seconds']:.1f} s vs {bare['wall_seconds']:.1f} s bare; "
        f"median over {len(pairs)} pair(s) {end_to_end:+.1%} "
        f"({', '.join(f'{each:+.1%}' for each in end_to_end_each)}); checkpoints written "
        f"{', '.join(f'{n:.0f}' for n in figures['checkpoints_written_each_pair'])}\n"
        f"one-off    MLflow store creation {ours['store_creation_seconds']:.1f} s, "
        f"ephemeral Prefect start + flow run {ours['flow_startup_seconds']:.1f} s"
    )
    for variant, row in figures["variants"].items():
        print(
            f"variant    {variant} (bare): {row['samples_per_second']:.1f} samples/s vs "
            f"{bare_sps:.1f} bare default "
            f"({statistics.median(row['ratio_vs_bare_each_round']):.2f}x, rounds: "
            f"{', '.join(f'{each:.2f}x' for each in row['ratio_vs_bare_each_round'])}), "
            f"{row['ratio_vs_a']:.1f}x vs (a), {row['ratio_vs_b']:.2f}x vs (b); second-half "
            f"steady state {row['steady_samples_per_second']:.1f} vs "
            f"{bare['steady_samples_per_second']:.1f}; accuracy {row['accuracy']:.4f} vs "
            f"{figures['bare_accuracy']:.4f}"
        )
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
