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
from pathlib import Path
from typing import Any

import pandas as pd
import torch

PROJECT_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT_ROOT))

from benchmarks._throughput_baselines import (  # noqa: E402
    load_sst2,
    matmul_peak_flops,
    require_accelerate,
    run_trainer_baseline,
    training_flops_per_token,
)
from benchmarks._throughput_ratchet import (  # noqa: E402
    dev_accuracy,
    loop_samples_per_second,
    padded_tokens_of_our_batches,
    run_ratchet_bare,
    run_ratchet_orchestrated,
)
from components.base_model import shipped_model_dir  # noqa: E402
from components.hardware import cpu_has_native_bf16  # noqa: E402
from components.logs import setup_logging  # noqa: E402
from components.state import QUIET_ENVIRONMENT  # noqa: E402


def parse_arguments() -> argparse.Namespace:
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
    return parser.parse_args()


def rate(run: dict[str, Any]) -> float:
    """Samples per second of one Ratchet run (its loop, in-loop orchestration included)."""
    return loop_samples_per_second(run["result"].metrics)


def run_rounds(
    args: argparse.Namespace, train: pd.DataFrame, dev: pd.DataFrame, steps: int
) -> tuple[list[dict[str, Any]], float]:
    """``--rounds`` rounds of (b), Ratchet bare, the variants and Ratchet orchestrated, in
    turn; returns the rounds' runs and (b)'s dev accuracy (from the first round)."""
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
    return rounds, baseline_b_accuracy


def measure_figures(
    args: argparse.Namespace,
    rounds: list[dict[str, Any]],
    baseline_b_accuracy: float,
    train: pd.DataFrame,
    dev: pd.DataFrame,
    steps: int,
) -> tuple[dict[str, Any], float, float, float]:
    """Baseline (a), the FLOP/s figures and the medians over ``rounds``.

    Returns:
        The figures, and the achieved, bf16-peak and fp32-peak FLOP/s.
    """
    a_steps = args.baseline_a_steps or steps
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
    return figures, achieved, peak_bf16, peak_fp32


def print_summary(
    figures: dict[str, Any], rounds: int, achieved: float, peak_bf16: float, peak_fp32: float
) -> None:
    """The figures as JSON, then the human summary (achieved and peak FLOP/s as measured)."""
    ours_sps, bare_sps = figures["ratchet_samples_per_second"], figures["bare_samples_per_second"]
    ratio_b_each, bare_ratio_b_each = (
        figures["ratio_vs_b_each_round"],
        figures["bare_ratio_vs_b_each_round"],
    )
    a_steps, orchestration = figures["baseline_a_steps"], figures["orchestration_seconds"]
    end_to_end = figures["end_to_end_overhead_fraction"]
    end_to_end_each = figures["end_to_end_overhead_fraction_each_pair"]
    print(json.dumps(figures, indent=2))
    print(
        f"\nsamples/s  (a) {figures['baseline_a_samples_per_second']:.1f}   "
        f"(b) {figures['baseline_b_samples_per_second']:.1f}   "
        f"ratchet {ours_sps:.1f}\n"
        f"ratio      vs (a) {figures['ratio_vs_a']:.1f}x   vs (b) {figures['ratio_vs_b']:.2f}x"
        f" (median of {rounds} round(s): "
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
        f"{figures['orchestration_fraction']:.1%} of {figures['train_seconds']:.1f} s training "
        f"(in loop {figures['in_loop_orchestration_seconds']:.2f} s, Prefect task "
        f"{figures['prefect_wrapper_seconds']:.2f} s, "
        f"MLflow run {figures['mlflow_run_seconds']:.2f} s); "
        f"end to end {figures['orchestrated_wall_seconds']:.1f} s "
        f"vs {figures['bare_wall_seconds']:.1f} s bare; "
        f"median over {len(end_to_end_each)} pair(s) {end_to_end:+.1%} "
        f"({', '.join(f'{each:+.1%}' for each in end_to_end_each)}); checkpoints written "
        f"{', '.join(f'{n:.0f}' for n in figures['checkpoints_written_each_pair'])}\n"
        f"one-off    MLflow store creation {figures['mlflow_store_creation_seconds']:.1f} s, "
        f"ephemeral Prefect start + flow run {figures['flow_startup_seconds']:.1f} s"
    )
    for variant, row in figures["variants"].items():
        print(
            f"variant    {variant} (bare): {row['samples_per_second']:.1f} samples/s vs "
            f"{bare_sps:.1f} bare default "
            f"({statistics.median(row['ratio_vs_bare_each_round']):.2f}x, rounds: "
            f"{', '.join(f'{each:.2f}x' for each in row['ratio_vs_bare_each_round'])}), "
            f"{row['ratio_vs_a']:.1f}x vs (a), {row['ratio_vs_b']:.2f}x vs (b); second-half "
            f"steady state {row['steady_samples_per_second']:.1f} vs "
            f"{figures['bare_steady_samples_per_second']:.1f}; accuracy {row['accuracy']:.4f} vs "
            f"{figures['bare_accuracy']:.4f}"
        )


def main() -> None:
    args = parse_arguments()
    require_accelerate()
    setup_logging(logging.WARNING)
    os.environ.setdefault("RATCHET_NO_PROGRESS", "1")
    for name, value in QUIET_ENVIRONMENT.items():  # telemetry off, as in the flow
        os.environ.setdefault(name, value)
    steps = args.steps or args.rows // args.batch_size
    train, dev = load_sst2(args.rows)
    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"torch {torch.__version__}, threads {torch.get_num_threads()}, "
        f"native bf16 {cpu_has_native_bf16()}, cuda {torch.cuda.is_available()}"
    )
    print(f"data: {args.rows} SST-2 train rows, batch {args.batch_size}, {steps} steps")

    rounds, baseline_b_accuracy = run_rounds(args, train, dev, steps)
    figures, achieved, peak_bf16, peak_fp32 = measure_figures(
        args, rounds, baseline_b_accuracy, train, dev, steps
    )
    print_summary(figures, args.rounds, achieved, peak_bf16, peak_fp32)
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
