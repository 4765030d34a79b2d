"""Masked-language-model pretraining: domain-adaptive from ``model.base``, or from scratch.

Run from the command line as ``ratchet pretrain`` (DVC stage ``pretrain``). It reads
the training split's texts plus ``pretrain.extra_corpora``
(:mod:`components.pretrain_corpus`) and writes a Hugging Face folder (safetensors +
tokenizer) that ``ratchet train`` starts from. The objective (dynamic BERT masking,
optional next-sentence prediction, perplexity) is :mod:`components.masked_lm`; the loop
is :mod:`components.training.loop`.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from components.base_model import model_fingerprint, resolve_base_model
from components.config import RatchetConfig
from components.files import atomic_dir, save_pretrained_atomically, write_metrics
from components.fingerprints import texts_fingerprint
from components.masked_lm import (
    MaskedLMBatches,
    MaskedPositionsObjective,
    attach_parts,
    base_parts_left_out,
    build_mlm_model,
    masked_lm_perplexity,
)
from components.pretrain_corpus import (
    corpora_fingerprint,
    gather_pretraining_texts,
    split_texts,
    token_windows,
)
from components.state import ProjectPaths
from components.training.checkpoints import clear_checkpoints
from components.training.loop import LoopResult, LoopSettings, MetricsCallback, run_loop
from components.training.resume import claim_checkpoint_dir, resume_key, run_key
from components.training.runtime import DistributedContext, Precision, is_main_process
from components.training.stage import TrainedModel, loop_settings, start_run

logger = logging.getLogger(__name__)


PretrainResult = TrainedModel  # the stage's name for what it hands on


def run_pretraining(
    config: RatchetConfig,
    texts: Sequence[str],
    output_dir: Path,
    checkpoint_dir: Path | None = None,
    on_metrics: MetricsCallback | None = None,
    base_model: str | None = None,
) -> PretrainResult:
    """Continue pretraining ``model.base`` (or train from scratch) on ``texts`` with MLM.

    Args:
        config: ``pretrain.*`` drive the objective and optimiser; ``train.precision``,
            ``train.compile``, ``train.cpu_speedups``, ``train.deterministic``,
            ``train.num_threads`` and
            ``train.checkpoint_every_*`` the runtime.
        texts: unlabelled texts (training split plus extra corpora).
        output_dir: Hugging Face folder written here (rank 0 only under DDP).
        checkpoint_dir: checkpoints go here; a checkpoint already there is resumed when
            it was written by a run with the same resume key (settings, texts and base
            model: see :func:`pretrain_resume_key`), else a ``TrainingError`` is raised.
        on_metrics: per-step metrics callback.
        base_model: ``model.base`` as the caller resolved it against its project root;
            when not given, an absolute path, a hub id or the shipped model (a relative
            path is then taken from the working directory).

    Returns:
        The folder and metrics incl. ``perplexity_before`` and ``perplexity_after``.
    """
    from transformers import AutoTokenizer

    settings = config.pretrain
    base = base_model or resolve_base_model(config.model.base)
    claim_checkpoint_dir(checkpoint_dir, pretrain_resume_key(config, texts, base))
    context, device, precision = start_run(settings.seed, config.train, checkpoint_dir)
    tokenizer = AutoTokenizer.from_pretrained(base)
    source, held_out = masked_lm_sources(tokenizer, texts, config, context)
    model = build_mlm_model(config, base, len(tokenizer)).to(device)
    # Loaded before training, so a base that cannot be read again fails before any compute.
    kept_parts = {} if settings.from_scratch else base_parts_left_out(model, base)
    perplexity_before = masked_lm_perplexity(model, held_out, settings.batch_size, precision)
    if context.enabled:
        torch.manual_seed(settings.seed + context.rank)
    objective = (
        MaskedPositionsObjective(model) if MaskedPositionsObjective.supports(model) else model
    )
    outcome = run_loop(
        objective,
        source,
        pretrain_loop_settings(config, precision),
        checkpoint_dir=checkpoint_dir,
        on_metrics=on_metrics,
        context=context,
    )
    perplexity_after = masked_lm_perplexity(model, held_out, settings.batch_size, precision)
    if context.is_main:
        if kept_parts:
            attach_parts(model, kept_parts)
            logger.info("kept the base model's %s in the output", ", ".join(kept_parts))
        save_pretrained_atomically(model, tokenizer, output_dir)
        if checkpoint_dir is not None:
            clear_checkpoints(checkpoint_dir)
    metrics = {
        **outcome.metrics,
        "perplexity_before": perplexity_before,
        "perplexity_after": perplexity_after,
        "train_sequences": float(len(source.sequences)),
        "eval_sequences": float(len(held_out.sequences)),
    }
    return pretrain_result(config, base, outcome, metrics, output_dir)


def masked_lm_sources(
    tokenizer: Any, texts: Sequence[str], config: RatchetConfig, context: DistributedContext
) -> tuple[MaskedLMBatches, MaskedLMBatches]:
    """The training batches and the held-out texts that perplexity is measured on."""
    settings = config.pretrain
    train_texts, eval_texts = split_texts(
        texts, settings.eval_texts, settings.max_texts, settings.seed
    )
    window = settings.max_length - (3 if settings.nsp else 2)
    source = MaskedLMBatches(
        tokenizer,
        token_windows(tokenizer, train_texts, window),
        settings.batch_size,
        settings.mlm_probability,
        settings.seed,
        context,
        settings.nsp,
    )
    held_out = MaskedLMBatches(
        tokenizer,
        token_windows(tokenizer, eval_texts, window),
        1,
        settings.mlm_probability,
        settings.seed,
        nsp=False,
    )
    return source, held_out


def pretrain_loop_settings(config: RatchetConfig, precision: Precision) -> LoopSettings:
    """The loop's settings from ``pretrain.*`` (and the runtime ``train.*`` keys)."""
    return loop_settings(
        config.pretrain, config.train, precision, config.pretrain.max_steps, "pretrain"
    )


def pretrain_result(
    config: RatchetConfig,
    base: str,
    outcome: LoopResult,
    metrics: dict[str, float],
    output_dir: Path,
) -> PretrainResult:
    """The run's result with its non-numeric facts, logged."""
    settings = config.pretrain
    logger.info(
        "pretrained %d steps: validation perplexity %.2f -> %.2f",
        outcome.state.step,
        metrics["perplexity_before"],
        metrics["perplexity_after"],
    )
    info = {
        "device": outcome.device,
        "precision": outcome.precision,
        "base_model": "scratch" if settings.from_scratch else base,
        "objective": "mlm+nsp" if settings.nsp else "mlm",
    }
    return PretrainResult(model_dir=output_dir, metrics=metrics, info=info)


def copy_base_model(base: str, output_dir: Path) -> None:
    """Write the resolved base model to ``output_dir`` unchanged (``pretrain.enabled:
    false``), so the pretrain -> train chain of DVC outputs holds either way."""
    from transformers import AutoModel, AutoTokenizer

    with atomic_dir(output_dir) as partial:
        if Path(base).is_dir():
            shutil.copytree(base, partial, dirs_exist_ok=True)
        else:
            AutoModel.from_pretrained(base).save_pretrained(partial)
            AutoTokenizer.from_pretrained(base).save_pretrained(partial)


def pretrain_resume_key(config: RatchetConfig, texts: Sequence[str], base: str) -> str:
    """The resume key of a pretraining run: its settings, the texts it reads and the
    fingerprint of the model it starts from (none when from scratch)."""
    start = "from-scratch" if config.pretrain.from_scratch else model_fingerprint(base)
    return resume_key(config, texts_fingerprint(texts), start)


def run_pretrain_stage(
    config: RatchetConfig, paths: ProjectPaths, on_metrics: MetricsCallback | None = None
) -> PretrainResult:
    """The ``pretrain`` stage: data/prepared (+ corpora) -> models/pretrained and
    metrics/pretrain.json. With ``pretrain.enabled: false`` the base is copied instead."""
    output_dir = paths.pretrained_dir
    base = resolve_base_model(config.model.base, paths.project_root)
    if not config.pretrain.enabled:
        if is_main_process():
            copy_base_model(base, output_dir)
        result = PretrainResult(output_dir, {}, {"base_model": base, "objective": "none"})
    else:
        start = "from-scratch" if config.pretrain.from_scratch else model_fingerprint(base)
        key = run_key(config, paths, start, corpora_fingerprint(config, paths))
        checkpoints = paths.checkpoints_dir / f"pretrain-{key}"
        corpus = gather_pretraining_texts(config, paths)
        trained = run_pretraining(
            config, corpus.texts, output_dir, checkpoints, on_metrics, base_model=base
        )
        result = replace(trained, metrics={**trained.metrics, **corpus.metrics})
    if is_main_process():
        write_metrics(paths.metrics_dir / "pretrain.json", result.metrics, result.info)
    return result
