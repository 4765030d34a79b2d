"""One fine-tuning run: a sequence classifier trained on the prepared splits and saved.

:func:`finetune_once` is the run: rows picked and tokenised, the classifier built from
the init model (lower layers frozen, layer-wise learning rates as set), the shared loop
(:mod:`components.training.loop`) run with validation accuracy for early stopping and
``train.keep``, and the Hugging Face folder written atomically. The stage entry that
chooses between one run and a soup of several is :mod:`components.finetune`.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Protocol

import pandas as pd
import torch
from torch import nn

from components.config import RatchetConfig, TrainConfig
from components.errors import ConfigError, TrainingError
from components.files import save_pretrained_atomically
from components.kernels.first_position import last_layer_at_first_position
from components.model_surgery import prepare_for_finetuning
from components.prepare import PreparedData
from components.training.batching import BatchOrder, BatchSource, pad_batch
from components.training.checkpoints import clear_checkpoints
from components.training.loop import LoopResult, LoopSettings, MetricsCallback, run_loop
from components.training.runtime import DistributedContext, Precision, choose_device
from components.training.stage import TrainedModel, loop_settings, start_run

logger = logging.getLogger(__name__)


FinetuneResult = TrainedModel  # the stage's name for what it hands on


@dataclass(frozen=True)
class FinetuneJob:
    """What a fine-tuning (one run, or a soup of several) is asked to do.

    Attributes:
        config: ``train.*``, ``model.max_length`` and ``model.pooling`` are used.
        data: prepared splits; ``data.labels`` become ``id2label``.
        init_model: a Hugging Face folder (the pretraining output or the base) or hub id.
        output_dir: where the model folder is written (rank 0 only under DDP).
        checkpoint_dir: checkpoints go here (and are resumed from); None: no checkpoints.
        on_metrics: per-step metrics callback (loss, lr, grad_norm, samples_per_second,
            val_accuracy/val_loss when evaluated).
    """

    config: RatchetConfig
    data: PreparedData
    init_model: str
    output_dir: Path
    checkpoint_dir: Path | None = None
    on_metrics: MetricsCallback | None = None


@dataclass
class ClassificationBatches:
    """Tokenised texts and labels served as length-grouped, dynamically padded batches."""

    encoded: list[list[int]]
    labels: list[int]
    order: BatchOrder
    pad_id: int
    pad_multiple: int = 1

    def __post_init__(self) -> None:
        self.lengths = [len(ids) for ids in self.encoded]

    def epoch_batches(self, epoch: int) -> list[list[int]]:
        return self.order.batches(self.lengths, epoch)

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


class ValidationScorer:
    """Scores a model on the validation rows a run selects on (the loop's ``evaluate``)."""

    def __init__(
        self,
        encoded: list[list[int]],
        labels: Sequence[int],
        batch_size: int,
        pad_id: int,
        precision: Precision,
        context: DistributedContext,
    ) -> None:
        self.encoded, self.labels, self.batch_size = encoded, labels, batch_size
        self.pad_id, self.precision, self.context = pad_id, precision, context

    def __call__(self, model: nn.Module) -> dict[str, float]:
        return evaluate_accuracy(
            model,
            self.encoded,
            self.labels,
            self.batch_size,
            self.pad_id,
            self.precision,
            self.context,
        )


def finetune_once(
    job: FinetuneJob,
    start_seed: int | None = None,
    on_saved: Callable[[FinetuneResult], None] | None = None,
) -> FinetuneResult:
    """One fine-tuning run with ``train.seed`` (``train.soup_seeds`` is not read).

    Args:
        job: the settings, data, init model and folders of the run.
        start_seed: seed of what a soup's members share (default ``train.seed``): the
            rows picked when ``train.max_train_samples`` / ``max_eval_samples`` cap them,
            and the initial weights of the new classification head. Members then differ
            in data order and dropout alone, and their heads' units line up for averaging.
        on_saved: called with the result once the model folder is in place, before the
            checkpoints are cleared (a soup records its finished member there).
    """
    from transformers import AutoTokenizer

    config, data, init_model = job.config, job.data, job.init_model
    checkpoint_dir = job.checkpoint_dir
    check_finetune_inputs(config, data, init_model)
    train_cfg, max_length = config.train, config.model.max_length
    context, device, precision = start_run(train_cfg.seed, train_cfg, checkpoint_dir)
    tokenizer = AutoTokenizer.from_pretrained(init_model)
    start_seed = train_cfg.seed if start_seed is None else start_seed
    train_rows = select_rows(data.train, train_cfg.max_train_samples, start_seed)
    train_encoded = encode_texts(tokenizer, train_rows["text"].tolist(), max_length)
    val_rows = select_rows(data.validation, train_cfg.max_eval_samples, start_seed)
    val_encoded = encode_texts(tokenizer, val_rows["text"].tolist(), max_length)
    score = ValidationScorer(
        val_encoded,
        val_rows["label"].astype(int).tolist(),
        config.eval.batch_size,
        tokenizer.pad_token_id,
        precision,
        context,
    )
    source = ClassificationBatches(
        train_encoded,
        train_rows["label"].astype(int).tolist(),
        BatchOrder(train_cfg.batch_size, train_cfg.seed, train_cfg.length_grouped, context),
        tokenizer.pad_token_id,
        pad_multiple=8 if device.type == "cuda" else 1,
    )
    model, lr_scales = build_classifier(config, data, init_model, start_seed)
    if context.enabled or start_seed != train_cfg.seed:
        # Same init everywhere (DDP also broadcasts rank 0's), different dropout per rank
        # and per soup member.
        torch.manual_seed(train_cfg.seed + context.rank)
    plan = FitPlan(
        model, lr_scales, source, score, "val_accuracy", len(train_encoded),
        first_position_only=train_cfg.last_layer_cls_only,
    )  # fmt: skip
    run = RunPlace(init_model, job.output_dir, checkpoint_dir, job.on_metrics, context, precision)
    return fit_and_save(config, plan, tokenizer, run, on_saved)


@dataclass(frozen=True)
class FitPlan:
    """What a task brings to one fine-tuning run: the model with its head, learning-rate
    scales, training batches, the validation scorer and the metric it selects on
    (``first_position_only``: the last layer computes [CLS] alone, sequence heads only)."""

    model: nn.Module
    lr_scales: dict[str, float] | None
    source: BatchSource
    score: ModelScorer
    metric_name: str
    train_examples: int
    first_position_only: bool = False


@dataclass(frozen=True)
class RunPlace:
    """Where a fine-tuning run comes from, writes and reports to, and how it runs."""

    init_model: str
    output_dir: Path
    checkpoint_dir: Path | None
    on_metrics: MetricsCallback | None
    context: DistributedContext
    precision: Precision


def fit_and_save(
    config: RatchetConfig,
    plan: FitPlan,
    tokenizer: Any,
    run: RunPlace,
    on_saved: Callable[[FinetuneResult], None] | None = None,
) -> FinetuneResult:
    """Run the shared loop on ``plan``, summarise it and save the model (main rank):
    the part of a fine-tuning run every task shares."""
    model, train_cfg = plan.model, config.train
    settings = finetune_loop_settings(train_cfg, len(plan.source.epoch_batches(0)), run.precision)
    with last_layer_at_first_position(model, plan.first_position_only) as cut:
        if cut:
            logger.info("the last encoder layer computes the [CLS] position only")
        outcome = run_loop(
            model,
            plan.source,
            settings,
            evaluate=plan.score,
            metric_name=plan.metric_name,
            checkpoint_dir=run.checkpoint_dir,
            on_metrics=run.on_metrics,
            context=run.context,
            lr_scales=plan.lr_scales,
        )
    result = summarise_run(
        outcome, plan.score, model, train_cfg, run.init_model, run.output_dir, plan.train_examples
    )
    if run.context.is_main:
        max_length = config.model.max_length
        save_finetuned(model, tokenizer, max_length, result, run.checkpoint_dir, on_saved)
    return result


def save_finetuned(
    model: nn.Module,
    tokenizer: Any,
    max_length: int,
    result: FinetuneResult,
    checkpoint_dir: Path | None,
    on_saved: Callable[[FinetuneResult], None] | None,
) -> None:
    """Write the model folder to ``result.model_dir``, report it, then clear the run's
    checkpoints (in that order, so a crash in between resumes rather than retrains)."""
    # Whatever loads the folder (evaluation, the gate's re-score, the MLflow model, the
    # Bento) reads its token window from the tokenizer: make it the trained one, so
    # serving truncates long texts where training and the gate did.
    tokenizer.model_max_length = max_length
    save_pretrained_atomically(model, tokenizer, result.model_dir)
    if on_saved is not None:
        on_saved(result)
    if checkpoint_dir is not None:
        clear_checkpoints(checkpoint_dir)


def finetune_loop_settings(
    train_cfg: TrainConfig, batches_per_epoch: int, precision: Precision
) -> LoopSettings:
    """The loop's settings from ``train.*``, with the run's resolved precision."""
    total_steps = count_total_steps(
        batches_per_epoch, train_cfg.epochs, train_cfg.grad_accum_steps, train_cfg.max_steps
    )
    return replace(
        loop_settings(train_cfg, train_cfg, precision, total_steps, "fine-tune"),
        max_grad_norm=train_cfg.max_grad_norm,
        grad_accum_steps=train_cfg.grad_accum_steps,
        eval_every_steps=train_cfg.eval_every_steps,
        early_stopping_patience=train_cfg.early_stopping_patience,
        keep=train_cfg.keep,
    )


def build_classifier(
    config: RatchetConfig, data: PreparedData, init_model: str, start_seed: int
) -> tuple[nn.Module, dict[str, float] | None]:
    """The classifier to fine-tune, its new head seeded with ``start_seed``, with the
    lower layers frozen as ``train.freeze_*`` ask.

    Returns:
        The model and its learning-rate scales (None without layer-wise decay).
    """
    from components.modeling import classifier_from_pretrained

    train_cfg = config.train
    if start_seed != train_cfg.seed:
        torch.manual_seed(start_seed)
    model = classifier_from_pretrained(
        init_model,
        config.model.pooling,
        num_labels=len(data.labels),
        id2label=dict(enumerate(data.labels)),
        label2id={name: index for index, name in enumerate(data.labels)},
    )
    return model, prepare_for_finetuning(model, train_cfg)


class ModelScorer(Protocol):
    """What :func:`summarise_run` needs of a validation scorer: the encoded rows it scores
    and a call that scores a model (``val_accuracy`` among the keys)."""

    @property
    def encoded(self) -> Sequence[Any]: ...

    def __call__(self, model: nn.Module) -> dict[str, float]: ...


def summarise_run(
    outcome: LoopResult,
    score: ModelScorer,
    model: nn.Module,
    train_cfg: TrainConfig,
    init_model: str,
    output_dir: Path,
    train_examples: int,
) -> FinetuneResult:
    """The run's metrics and facts; the kept weights' scores come from the loop's last
    evaluation of them when there was one (no second pass)."""
    kept_scores = (
        outcome.state.best_scores if train_cfg.keep == "best" else outcome.state.last_scores
    )
    final_scores = kept_scores or score(model)
    metrics = {
        **outcome.metrics,
        **final_scores,
        "train_examples": float(train_examples),
        "val_examples": float(len(score.encoded)),
    }
    info = {
        "device": outcome.device,
        "precision": outcome.precision,
        "init_model": init_model,
        "kept_weights": train_cfg.keep,  # best: of step best_step; last: of the last step
    }
    logger.info(
        "fine-tuned %d steps: val_accuracy %.4f, %.1f samples/s",
        outcome.state.step,
        final_scores["val_accuracy"],
        metrics["train_samples_per_second"],
    )
    return FinetuneResult(model_dir=output_dir, metrics=metrics, info=info)


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
