"""Fine-tune a sequence classifier on the prepared splits: the ``train`` stage.

Run from the command line as ``ratchet train`` (DVC stage ``train``; multi-GPU or
multi-process with ``torchrun --nproc_per_node N -m cli train``). The output is a
Hugging Face folder (safetensors + tokenizer) whose config carries ``id2label``.

This module is the stage's entry: it picks the init model, claims the checkpoint folder
and runs either one fine-tune (:mod:`components.finetune_run`) or a soup of several
(:mod:`components.soup`). The loop itself lives in :mod:`components.training.loop`:
length-grouped batches with dynamic padding, gradient accumulation, linear warm-up/decay,
AdamW with weight decay, clipping, early stopping on validation accuracy (``train.keep``
saves the best-validated weights or the last), bf16 autocast where it pays, and atomic
checkpoints that resume exactly after a kill.
"""

from __future__ import annotations

from pathlib import Path

from components.base_model import model_fingerprint, resolve_base_model
from components.config import RatchetConfig
from components.files import write_metrics
from components.finetune_run import (
    FinetuneJob,
    FinetuneResult,
    check_finetune_inputs,
    finetune_once,
)
from components.fingerprints import texts_fingerprint
from components.prepare import PreparedData
from components.soup import run_soup_finetuning
from components.state import ProjectPaths
from components.token_finetune import finetune_tokens_once
from components.token_prepare import load_task_data
from components.training.loop import MetricsCallback
from components.training.resume import claim_checkpoint_dir, resume_key, run_key
from components.training.runtime import is_main_process


def run_finetuning(
    config: RatchetConfig,
    data: PreparedData,
    init_model: str,
    output_dir: Path,
    checkpoint_dir: Path | None = None,
    on_metrics: MetricsCallback | None = None,
) -> FinetuneResult:
    """Fine-tune ``init_model`` on ``data.train``, select on ``data.validation``, save.

    ``data.task`` picks a sequence or a token classifier. With ``train.soup_seeds`` set,
    fine-tunes once per seed and saves the average of the runs' weights (see
    :func:`run_soup_finetuning`), for either task.

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
    token_task = config.data.task == "token-classification"
    if checkpoint_dir is not None:
        if not token_task:
            check_finetune_inputs(config, data, init_model)
        claim_checkpoint_dir(checkpoint_dir, finetune_resume_key(config, data, init_model))
    job = FinetuneJob(config, data, init_model, output_dir, checkpoint_dir, on_metrics)
    if config.train.soup_seeds:
        return run_soup_finetuning(job)
    return finetune_tokens_once(job) if token_task else finetune_once(job)


def finetune_resume_key(config: RatchetConfig, data: PreparedData, init_model: str) -> str:
    """The resume key of a fine-tuning run: its settings, the bytes of the training and
    validation rows it learns from and selects on, and the init model's fingerprint."""
    label_column = "tag_ids" if config.data.task == "token-classification" else "label"
    rows = (
        f"{split}\t{label}\t{text}"
        for split in ("train", "validation")
        for text, label in zip(
            data.split(split)["text"], data.split(split)[label_column], strict=True
        )
    )
    return resume_key(
        config,
        texts_fingerprint([*data.labels, *rows]),
        model_fingerprint(init_model),
    )


def default_init_model(config: RatchetConfig, paths: ProjectPaths) -> str:
    """models/pretrained when the pretrain stage produced it, else the resolved base."""
    pretrained = paths.pretrained_dir
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
    data = load_task_data(config.data.task, paths.prepared_dir)
    init = init_model or default_init_model(config, paths)
    key = run_key(config, paths, model_fingerprint(init))
    checkpoints = paths.checkpoints_dir / f"finetune-{key}"
    result = run_finetuning(config, data, init, paths.finetuned_dir, checkpoints, on_metrics)
    if is_main_process():
        write_metrics(paths.metrics_dir / "train.json", result.metrics, result.info)
    return result
