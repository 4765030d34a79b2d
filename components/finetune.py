"""Fine-tune a sequence classifier on the prepared splits.

Run from the command line as ``ratchet train`` (DVC stage ``train``; multi-GPU or
multi-process with ``torchrun --nproc_per_node N -m flows.cli train``). The output is a
Hugging Face folder (safetensors + tokenizer) whose config carries ``id2label``.

The loop itself lives in :mod:`components.training`: length-grouped batches with dynamic
padding, gradient accumulation, linear warm-up/decay, AdamW with weight decay, clipping,
early stopping on validation accuracy (``train.keep`` saves the best-validated weights or
the last), bf16 autocast where it pays, and atomic checkpoints that resume exactly after a
kill.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, cast

import pandas as pd
import torch
from torch import nn

from components.base_model import model_fingerprint, resolve_base_model
from components.config import RatchetConfig
from components.errors import ConfigError, TrainingError
from components.fingerprints import texts_fingerprint
from components.first_position import last_layer_at_first_position
from components.prepare import PreparedData, load_prepared
from components.soup import average_model_folders
from components.state import ProjectPaths
from components.training import (
    RUN_KEY_FILE,
    DistributedContext,
    LoopSettings,
    MetricsCallback,
    Precision,
    broadcast_from_main,
    choose_device,
    claim_checkpoint_dir,
    clear_checkpoints,
    init_distributed,
    is_main_process,
    length_grouped_batches,
    pad_batch,
    resume_key,
    run_key,
    run_loop,
    run_precision,
    seed_everything,
    write_metrics,
)

logger = logging.getLogger(__name__)

PRETRAINED_DIR_NAME = "pretrained"
FINETUNED_DIR_NAME = "finetuned"


@dataclass(frozen=True)
class FinetuneResult:
    """Where the fine-tuned model was written and how training went.

    Attributes:
        model_dir: the Hugging Face folder (safetensors, tokenizer, ``id2label``).
        metrics: ``val_accuracy``, ``val_loss``, ``train_loss``, ``steps``,
            ``train_samples_per_second``, ``train_seconds``, ``orchestration_seconds``, ...
        info: non-numeric facts about the run (device, precision, init model).
    """

    model_dir: Path
    metrics: dict[str, float]
    info: dict[str, str] = field(default_factory=dict)


class ClassificationBatches:
    """Tokenised texts and labels served as length-grouped, dynamically padded batches."""

    def __init__(
        self,
        encoded: list[list[int]],
        labels: Sequence[int],
        batch_size: int,
        seed: int,
        pad_id: int,
        grouped: bool = True,
        context: DistributedContext | None = None,
        pad_multiple: int = 1,
    ) -> None:
        self.encoded, self.labels = encoded, list(labels)
        self.lengths = [len(ids) for ids in encoded]
        self.batch_size, self.seed, self.pad_id = batch_size, seed, pad_id
        self.grouped, self.context, self.pad_multiple = grouped, context, pad_multiple

    def epoch_batches(self, epoch: int) -> list[list[int]]:
        return length_grouped_batches(
            self.lengths, self.batch_size, self.seed, epoch, self.grouped, self.context
        )

    def collate(self, indices: list[int], step: int) -> dict[str, torch.Tensor]:
        batch = pad_batch([self.encoded[i] for i in indices], self.pad_id, self.pad_multiple)
        batch["labels"] = torch.tensor([self.labels[i] for i in indices], dtype=torch.long)
        return batch


def check_finetune_inputs(config: RatchetConfig, data: PreparedData, init_model: str) -> None:
    """Fail before any compute on settings or data that cannot train.

    Raises:
        ConfigError: no or one class in ``data.labels``, a batch size below 1, an init
            model folder that does not exist, or mean pooling asked of a non-BERT model.
        TrainingError: empty splits, or label ids outside the class list.
    """
    if len(data.labels) < 2:
        raise ConfigError(
            f"data.labels: a classifier needs at least two classes, got {len(data.labels)} "
            f"({data.labels}); check data.labels or the prepared manifest"
        )
    if config.train.batch_size < 1:
        raise ConfigError(f"train.batch_size must be at least 1, got {config.train.batch_size}")
    init_path = Path(init_model).expanduser()
    if (init_model.startswith((".", "/", "~")) or init_path.exists()) and not (
        init_path / "config.json"
    ).is_file():
        raise ConfigError(
            f"model.base / init model {init_model!r} is not a Hugging Face model folder "
            "(missing or without config.json)"
        )
    if config.model.pooling == "mean":
        from components.modeling import mean_pooling_problem

        problem = mean_pooling_problem(init_model)
        if problem:
            raise ConfigError(problem)
    for name in ("train", "validation"):
        frame = data.split(name)
        if frame.empty:
            raise TrainingError(f"the prepared {name} split is empty")
        bad = frame[(frame["label"] < 0) | (frame["label"] >= len(data.labels))]
        if not bad.empty:
            raise TrainingError(
                f"{len(bad)} {name} rows have label ids outside 0..{len(data.labels) - 1}"
            )


def encoder_layers(model: nn.Module, setting: str = "train.freeze_layers") -> nn.ModuleList:
    """The stack of transformer blocks of a Hugging Face encoder (BERT, RoBERTa, DistilBERT,
    ELECTRA, ...), found by the attribute names those architectures use; ``setting`` is
    the option named in the error when there is none."""
    base = getattr(model, "base_model", model)
    for path in ("encoder.layer", "transformer.layer", "layers", "layer"):
        found: Any = base
        for name in path.split("."):
            found = getattr(found, name, None)
        if isinstance(found, nn.ModuleList):
            return found
    raise ConfigError(
        f"{setting}: cannot find the encoder layers of {type(model).__name__}; "
        f"leave {setting} at its default"
    )


def embedding_modules(model: nn.Module) -> list[nn.Module]:
    """The token (and position/type) embedding modules below the encoder blocks."""
    modules: list[nn.Module] = [model.get_input_embeddings()]  # type: ignore[operator]
    base = getattr(model, "base_model", model)
    for name in ("embeddings", "embed_positions"):
        module = getattr(base, name, None)
        if isinstance(module, nn.Module):
            modules.append(module)
    return modules


def layerwise_lr_scales(model: nn.Module, decay: float) -> dict[str, float]:
    """Learning-rate multipliers by parameter name for layer-wise decay.

    Everything above the encoder (pooler, classifier) keeps the full rate; block ``i`` of
    ``L`` gets ``decay ** (L - i)`` and the embeddings ``decay ** (L + 1)``. The lower
    layers hold general features that a task's labels should move less than the top.
    """
    blocks = encoder_layers(model, "train.layer_lr_decay")
    depth: dict[int, int] = {}
    for module in embedding_modules(model):
        depth.update((id(parameter), 0) for parameter in module.parameters())
    for index, block in enumerate(blocks):
        depth.update((id(parameter), index + 1) for parameter in block.parameters())
    top = len(blocks) + 1
    return {
        name: decay ** (top - depth.get(id(parameter), top))
        for name, parameter in model.named_parameters()
    }


def freeze_lower_weights(model: nn.Module, embeddings: bool, layers: int) -> int:
    """Stop gradients into the embeddings and the lowest ``layers`` encoder blocks.

    Returns:
        The number of weights left trainable.
    """
    if embeddings or layers:
        for module in embedding_modules(model):
            module.requires_grad_(False)
    if layers:
        stack = encoder_layers(model)
        if layers >= len(stack):
            raise ConfigError(
                f"train.freeze_layers is {layers}, but the model has only {len(stack)} layers"
            )
        for block in stack[:layers]:
            block.requires_grad_(False)
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def encode_texts(tokenizer: Any, texts: Sequence[str], max_length: int) -> list[list[int]]:
    """Token ids with special tokens, truncated to ``max_length``, unpadded."""
    return tokenizer(list(texts), truncation=True, max_length=max_length)["input_ids"]


def select_rows(frame: pd.DataFrame, max_samples: int | None, seed: int) -> pd.DataFrame:
    """A seeded random subset of at most ``max_samples`` rows (all rows when None)."""
    if max_samples is None or max_samples >= len(frame):
        return frame
    return frame.sample(n=max_samples, random_state=seed)


def count_total_steps(
    batches_per_epoch: int, epochs: float, grad_accum_steps: int, max_steps: int | None
) -> int:
    """Optimiser steps for ``epochs`` passes, capped by ``max_steps``."""
    steps_per_epoch = max(batches_per_epoch // grad_accum_steps, 1)
    total = max(math.ceil(epochs * steps_per_epoch), 1)
    return min(total, max_steps) if max_steps is not None else total


@torch.no_grad()
def evaluate_accuracy(
    model: nn.Module,
    encoded: list[list[int]],
    labels: Sequence[int],
    batch_size: int,
    pad_id: int,
    precision: Precision = "fp32",
    context: DistributedContext | None = None,
) -> dict[str, float]:
    """Accuracy and mean cross-entropy over a split, length-sorted for speed.

    Under DDP each rank scores a shard and the counts are summed, so every rank sees the
    same numbers and takes the same early-stopping decision.
    """
    context = context or DistributedContext()
    device = next(model.parameters()).device
    model.eval()
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]))[
        context.rank :: context.world_size
    ]
    correct, loss_sum = 0.0, 0.0
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        batch = {k: v.to(device) for k, v in pad_batch([encoded[i] for i in chunk], pad_id).items()}
        targets = torch.tensor([labels[i] for i in chunk], device=device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
            logits = model(**batch).logits.float()
        correct += (logits.argmax(-1) == targets).sum().item()
        loss_sum += nn.functional.cross_entropy(logits, targets, reduction="sum").item()
    # On the model's device: NCCL reduces only CUDA tensors, gloo CPU ones.
    totals = torch.tensor([correct, loss_sum, len(order)], dtype=torch.float64, device=device)
    if context.enabled:
        import torch.distributed as dist

        dist.all_reduce(totals)
    count = max(totals[2].item(), 1.0)
    return {"val_accuracy": totals[0].item() / count, "val_loss": totals[1].item() / count}


def save_model_atomically(model: nn.Module, tokenizer: Any, output_dir: Path) -> None:
    """save_pretrained into a sibling temp folder, then swap it into place."""
    output_dir.parent.mkdir(parents=True, exist_ok=True)
    partial = output_dir.parent / f".{output_dir.name}.tmp-{os.getpid()}"
    shutil.rmtree(partial, ignore_errors=True)
    model.save_pretrained(partial, safe_serialization=True)  # type: ignore[operator]
    tokenizer.save_pretrained(partial)
    if output_dir.exists():
        shutil.rmtree(output_dir)
    os.replace(partial, output_dir)


def run_finetuning(
    config: RatchetConfig,
    data: PreparedData,
    init_model: str,
    output_dir: Path,
    checkpoint_dir: Path | None = None,
    on_metrics: MetricsCallback | None = None,
) -> FinetuneResult:
    """Fine-tune ``init_model`` on ``data.train``, select on ``data.validation``, save.

    With ``train.soup_seeds`` set, fine-tunes once per seed and saves the average of the
    runs' weights (see :func:`run_soup_finetuning`).

    Args:
        config: ``train.*`` and ``model.max_length`` are used.
        data: prepared splits; ``data.labels`` become ``id2label``.
        init_model: a Hugging Face folder (the pretraining output or the base) or hub id.
        output_dir: where the model folder is written (rank 0 only under DDP).
        checkpoint_dir: checkpoints go here; a checkpoint already there is resumed when
            it was written by a run with the same resume key (settings, data and init
            model: see :func:`finetune_resume_key`).
        on_metrics: per-step metrics callback (loss, lr, grad_norm, samples_per_second,
            val_accuracy/val_loss when evaluated).

    Returns:
        The output folder and metrics (validation accuracy of the saved weights).

    Raises:
        ConfigError / TrainingError: bad settings or data, or checkpoints of another
            run in ``checkpoint_dir``, before any compute.
    """
    if checkpoint_dir is not None:
        check_finetune_inputs(config, data, init_model)
        claim_checkpoint_dir(checkpoint_dir, finetune_resume_key(config, data, init_model))
    if config.train.soup_seeds:
        return run_soup_finetuning(config, data, init_model, output_dir, checkpoint_dir, on_metrics)
    return finetune_once(config, data, init_model, output_dir, checkpoint_dir, on_metrics)


def finetune_resume_key(config: RatchetConfig, data: PreparedData, init_model: str) -> str:
    """The resume key of a fine-tuning run: its settings, the bytes of the training and
    validation rows it learns from and selects on, and the init model's fingerprint."""
    rows = (
        f"{split}\t{label}\t{text}"
        for split in ("train", "validation")
        for text, label in zip(data.split(split)["text"], data.split(split)["label"], strict=True)
    )
    return resume_key(
        config,
        texts_fingerprint([*data.labels, *rows]),
        model_fingerprint(init_model),
    )


def finetune_once(
    config: RatchetConfig,
    data: PreparedData,
    init_model: str,
    output_dir: Path,
    checkpoint_dir: Path | None = None,
    on_metrics: MetricsCallback | None = None,
    start_seed: int | None = None,
    on_saved: Callable[[FinetuneResult], None] | None = None,
) -> FinetuneResult:
    """One fine-tuning run with ``train.seed`` (``train.soup_seeds`` is not read).

    Args:
        start_seed: seed of what a soup's members share (default ``train.seed``): the
            rows picked when ``train.max_train_samples`` / ``max_eval_samples`` cap them,
            and the initial weights of the new classification head. Members then differ
            in data order and dropout alone, and their heads' units line up for averaging.
        on_saved: called with the result once the model folder is in place, before the
            checkpoints are cleared (a soup records its finished member there).
    """
    from transformers import AutoTokenizer

    from components.modeling import classifier_from_pretrained

    check_finetune_inputs(config, data, init_model)
    train_cfg = config.train
    context = init_distributed()
    if train_cfg.num_threads:
        torch.set_num_threads(train_cfg.num_threads)
    seed_everything(train_cfg.seed, train_cfg.deterministic)
    tokenizer = AutoTokenizer.from_pretrained(init_model)
    start_seed = train_cfg.seed if start_seed is None else start_seed
    train_rows = select_rows(data.train, train_cfg.max_train_samples, start_seed)
    max_length = config.model.max_length
    train_encoded = encode_texts(tokenizer, train_rows["text"].tolist(), max_length)
    val_rows = select_rows(data.validation, train_cfg.max_eval_samples, start_seed)
    val_encoded = encode_texts(tokenizer, val_rows["text"].tolist(), max_length)
    val_labels = val_rows["label"].astype(int).tolist()
    device = choose_device(context)
    precision = run_precision(
        train_cfg.precision, device, train_cfg.deterministic, checkpoint_dir, context
    )
    pad_multiple = 8 if device.type == "cuda" else 1
    source = ClassificationBatches(
        train_encoded,
        train_rows["label"].astype(int).tolist(),
        train_cfg.batch_size,
        train_cfg.seed,
        tokenizer.pad_token_id,
        train_cfg.length_grouped,
        context,
        pad_multiple,
    )
    total_steps = count_total_steps(
        len(source.epoch_batches(0)),
        train_cfg.epochs,
        train_cfg.grad_accum_steps,
        train_cfg.max_steps,
    )
    if start_seed != train_cfg.seed:
        torch.manual_seed(start_seed)
    model = classifier_from_pretrained(
        init_model,
        config.model.pooling,
        num_labels=len(data.labels),
        id2label=dict(enumerate(data.labels)),
        label2id={name: index for index, name in enumerate(data.labels)},
    )
    trainable = freeze_lower_weights(model, train_cfg.freeze_embeddings, train_cfg.freeze_layers)
    logger.info("fine-tuning %d of %d weights", trainable, model.num_parameters())
    lr_scales = (
        layerwise_lr_scales(model, train_cfg.layer_lr_decay)
        if train_cfg.layer_lr_decay < 1
        else None
    )
    if context.enabled or start_seed != train_cfg.seed:
        # Same init everywhere (DDP also broadcasts rank 0's), different dropout per rank
        # and per soup member.
        torch.manual_seed(train_cfg.seed + context.rank)
    settings = LoopSettings(
        total_steps=total_steps,
        lr=train_cfg.lr,
        weight_decay=train_cfg.weight_decay,
        warmup_fraction=train_cfg.warmup_fraction,
        max_grad_norm=train_cfg.max_grad_norm,
        grad_accum_steps=train_cfg.grad_accum_steps,
        eval_every_steps=train_cfg.eval_every_steps,
        early_stopping_patience=train_cfg.early_stopping_patience,
        keep=train_cfg.keep,
        checkpoint_every_steps=train_cfg.checkpoint_every_steps,
        checkpoint_every_minutes=train_cfg.checkpoint_every_minutes,
        seed=train_cfg.seed,
        precision=precision,
        compile=train_cfg.compile,
        cpu_speedups=train_cfg.cpu_speedups,
        description="fine-tune",
    )

    def evaluate(current: nn.Module) -> dict[str, float]:
        return evaluate_accuracy(
            current,
            val_encoded,
            val_labels,
            config.eval.batch_size,
            tokenizer.pad_token_id,
            precision,
            context,
        )

    with last_layer_at_first_position(model, train_cfg.last_layer_cls_only) as cut:
        if cut:
            logger.info("the last encoder layer computes the [CLS] position only")
        outcome = run_loop(
            model,
            source,
            settings,
            evaluate=evaluate,
            metric_name="val_accuracy",
            checkpoint_dir=checkpoint_dir,
            on_metrics=on_metrics,
            context=context,
            lr_scales=lr_scales,
        )
    # The model holds the weights ``keep`` chose, last evaluated at the best step or the
    # last one; their scores need no second pass.
    kept_scores = (
        outcome.state.best_scores if settings.keep == "best" else outcome.state.last_scores
    )
    final_scores = kept_scores or evaluate(model)
    metrics = {
        **outcome.metrics,
        **final_scores,
        "train_examples": float(len(train_encoded)),
        "val_examples": float(len(val_encoded)),
    }
    info = {
        "device": outcome.device,
        "precision": outcome.precision,
        "init_model": init_model,
        "kept_weights": train_cfg.keep,  # best: of step best_step; last: of the last step
    }
    result = FinetuneResult(model_dir=output_dir, metrics=metrics, info=info)
    if context.is_main:
        # Whatever loads the folder (evaluation, the gate's re-score, the MLflow model, the
        # Bento) reads its token window from the tokenizer: make it the trained one, so
        # serving truncates long texts where training and the gate did.
        tokenizer.model_max_length = config.model.max_length
        save_model_atomically(model, tokenizer, output_dir)
        if on_saved is not None:
            on_saved(result)
        if checkpoint_dir is not None:
            clear_checkpoints(checkpoint_dir)
    logger.info(
        "fine-tuned %d steps: val_accuracy %.4f, %.1f samples/s",
        outcome.state.step,
        final_scores["val_accuracy"],
        metrics["train_samples_per_second"],
    )
    return result


# Counts and durations that add up over a soup's members.
SUMMED_METRICS = (
    "steps",
    "samples_seen",
    "train_seconds",
    "train_cpu_seconds",
    "orchestration_seconds",
    "checkpoints_written",
)


def run_soup_finetuning(
    config: RatchetConfig,
    data: PreparedData,
    init_model: str,
    output_dir: Path,
    checkpoint_dir: Path | None = None,
    on_metrics: MetricsCallback | None = None,
) -> FinetuneResult:
    """Fine-tune once per seed (``train.seed``, then ``train.soup_seeds``) from the same
    ``init_model`` and save the uniform average of the runs' weights.

    The members share their start: the init model, the new head's initial weights and,
    when ``train.max_train_samples`` or ``max_eval_samples`` pick a subset, the rows; they
    differ in data order and dropout. Each member checkpoints into ``seed-<n>/`` under
    ``checkpoint_dir`` and, once finished, keeps its model in ``seed-<n>-model/`` with its
    metrics in ``seed-<n>.json`` until the soup is written. A rerun after a crash therefore
    retrains only the unfinished members, each from its last checkpoint; without a
    ``checkpoint_dir`` the members live in a temporary folder and nothing resumes.

    Returns:
        The soup's folder; ``val_accuracy``/``val_loss`` are the soup's own,
        ``seed_<n>_val_accuracy`` each member's (on the same rows), and the step,
        sample and time counts are summed over the members.
    """
    check_finetune_inputs(config, data, init_model)
    if checkpoint_dir is None:
        with tempfile.TemporaryDirectory(prefix="ratchet-soup-") as scratch:
            return run_soup_finetuning(
                config, data, init_model, output_dir, Path(scratch), on_metrics
            )
    context = init_distributed()
    seeds = [config.train.seed, *config.train.soup_seeds]
    done = checkpoint_dir / "soup.json"
    finished_soup = load_recorded_result(done, output_dir)
    if finished_soup is None:
        members = train_soup_members(config, data, init_model, checkpoint_dir, on_metrics)
        metrics = soup_metrics(seeds, members)
        info = {**members[0].info, "soup_seeds": ",".join(str(seed) for seed in seeds)}
        if context.is_main:
            average_model_folders([member.model_dir for member in members], output_dir)
            # Scored at the members' precision, not a fresh timing that could differ.
            precision = cast(Precision, info["precision"])
            metrics.update(score_saved_model(config, data, output_dir, precision))
            # From here a rerun reuses the soup, so a kill during the clean-up below
            # never sends members back to training.
            write_metrics(done, metrics, info)
        finished_soup = FinetuneResult(model_dir=output_dir, metrics=metrics, info=info)
    if context.enabled:
        finished_soup = broadcast_from_main(finished_soup)  # every rank reports the soup
    if context.is_main:
        for seed in seeds:
            shutil.rmtree(checkpoint_dir / f"seed-{seed}-model", ignore_errors=True)
            shutil.rmtree(checkpoint_dir / f"seed-{seed}", ignore_errors=True)
            (checkpoint_dir / f"seed-{seed}.json").unlink(missing_ok=True)
        done.unlink(missing_ok=True)
        (checkpoint_dir / RUN_KEY_FILE).unlink(missing_ok=True)
    member_scores = [finished_soup.metrics[f"seed_{seed}_val_accuracy"] for seed in seeds]
    logger.info(
        "model soup of %d fine-tunes: val_accuracy %.4f (members: %s)",
        len(seeds),
        finished_soup.metrics["val_accuracy"],
        ", ".join(f"{score:.4f}" for score in member_scores),
    )
    return finished_soup


def train_soup_members(
    config: RatchetConfig,
    data: PreparedData,
    init_model: str,
    workdir: Path,
    on_metrics: MetricsCallback | None,
) -> list[FinetuneResult]:
    """Fine-tune (or reuse, when a record says it finished) one member per seed."""
    context = init_distributed()
    seeds = [config.train.seed, *config.train.soup_seeds]
    members: list[FinetuneResult] = []
    for seed in seeds:
        member_dir, record = workdir / f"seed-{seed}-model", workdir / f"seed-{seed}.json"
        finished = load_recorded_result(record, member_dir)
        if context.enabled:
            # Rank 0's view decides, so every rank trains the same members.
            finished = broadcast_from_main(finished)
        if finished is not None:
            logger.info("soup member seed %d already fine-tuned; reusing it", seed)
            members.append(finished)
            continue
        logger.info("soup member %d of %d: seed %d", len(members) + 1, len(seeds), seed)
        member_config = config.model_copy(
            update={"train": config.train.model_copy(update={"seed": seed, "soup_seeds": []})}
        )
        members.append(
            finetune_once(
                member_config,
                data,
                init_model,
                member_dir,
                workdir / f"seed-{seed}",
                offset_steps(on_metrics, sum(m.metrics["steps"] for m in members)),
                start_seed=config.train.seed,
                on_saved=partial(record_result, record),
            )
        )
    return members


def record_result(record: Path, result: FinetuneResult) -> None:
    write_metrics(record, result.metrics, result.info)


def offset_steps(on_metrics: MetricsCallback | None, offset: float) -> MetricsCallback | None:
    """A member's per-step metrics numbered after the previous members' steps, so the
    members' curves follow each other in one MLflow run instead of overlapping."""
    if on_metrics is None or not offset:
        return on_metrics
    return lambda step, metrics: on_metrics(step + int(offset), metrics)


def load_recorded_result(record: Path, model_dir: Path) -> FinetuneResult | None:
    """A finished run's result: its metrics file and its model folder both exist."""
    if not (record.is_file() and (model_dir / "config.json").is_file()):
        return None
    saved = json.loads(record.read_text())  # write_metrics' layout: the metrics + "info"
    info = saved.pop("info")
    return FinetuneResult(model_dir=model_dir, metrics=saved, info=info)


def soup_metrics(seeds: Sequence[int], members: Sequence[FinetuneResult]) -> dict[str, float]:
    """Summed counts and times, the members' mean training loss and each member's score."""
    metrics = {name: sum(m.metrics.get(name, 0.0) for m in members) for name in SUMMED_METRICS}
    metrics["train_samples_per_second"] = metrics["samples_seen"] / max(
        metrics["train_seconds"], 1e-9
    )
    metrics["train_loss"] = sum(m.metrics["train_loss"] for m in members) / len(members)
    metrics["train_examples"] = members[0].metrics["train_examples"]
    metrics["val_examples"] = members[0].metrics["val_examples"]
    metrics["soup_members"] = float(len(members))
    for seed, member in zip(seeds, members, strict=True):
        metrics[f"seed_{seed}_val_accuracy"] = member.metrics["val_accuracy"]
    return metrics


def score_saved_model(
    config: RatchetConfig, data: PreparedData, model_dir: Path, precision: Precision
) -> dict[str, float]:
    """Validation accuracy and loss of a saved classifier, on the validation rows that
    the run with ``train.seed`` scored (a soup's members scored the same ones), at the
    ``precision`` the run decided on."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    import components.modeling  # noqa: F401  (registers the mean-pooling classifier)

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    rows = select_rows(data.validation, config.train.max_eval_samples, config.train.seed)
    device = choose_device()
    model = AutoModelForSequenceClassification.from_pretrained(model_dir).to(device)
    return evaluate_accuracy(
        model,
        encode_texts(tokenizer, rows["text"].tolist(), config.model.max_length),
        rows["label"].astype(int).tolist(),
        config.eval.batch_size,
        tokenizer.pad_token_id,
        precision,
    )


def default_init_model(config: RatchetConfig, paths: ProjectPaths) -> str:
    """models/pretrained when the pretrain stage produced it, else the resolved base."""
    pretrained = paths.models_dir / PRETRAINED_DIR_NAME
    if (pretrained / "config.json").is_file():
        return str(pretrained)
    return resolve_base_model(config.model.base, paths.project_root)


def run_train_stage(
    config: RatchetConfig,
    paths: ProjectPaths,
    init_model: str | None = None,
    on_metrics: MetricsCallback | None = None,
) -> FinetuneResult:
    """The ``train`` stage: data/prepared + models/pretrained -> models/finetuned and
    metrics/train.json."""
    data = load_prepared(paths.prepared_dir)
    init = init_model or default_init_model(config, paths)
    key = run_key(config, paths, model_fingerprint(init))
    checkpoints = paths.checkpoints_dir / f"finetune-{key}"
    result = run_finetuning(
        config, data, init, paths.models_dir / FINETUNED_DIR_NAME, checkpoints, on_metrics
    )
    if is_main_process():
        write_metrics(paths.metrics_dir / "train.json", result.metrics, result.info)
    return result
