"""Masked-language-model pretraining: domain-adaptive from ``model.base``, or from scratch.

Run from the command line as ``ratchet pretrain`` (DVC stage ``pretrain``). It reads
the training split's texts plus ``pretrain.extra_corpora`` and writes a Hugging Face
folder (safetensors + tokenizer) that ``ratchet train`` starts from.

Masking is dynamic (a fresh 15% of tokens each time a text is seen; 80% of those become
[MASK], 10% a random token, 10% stay) and derived from (seed, step, rank), so a resumed
run masks exactly as an uninterrupted one. Validation perplexity on held-out texts is
measured with one fixed masking before and after training. With ``pretrain.nsp`` the
model is a ``BertForPreTraining`` that also learns BERT's next-sentence prediction.
"""

from __future__ import annotations

import logging
import math
import os
import random
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from components.base_model import model_fingerprint, resolve_base_model
from components.config import RatchetConfig
from components.errors import ConfigError, DataError, TrainingError
from components.finetune import PRETRAINED_DIR_NAME, save_model_atomically
from components.fingerprints import path_fingerprint, texts_fingerprint
from components.prepare import load_prepared
from components.state import ProjectPaths
from components.training import (
    DistributedContext,
    LoopSettings,
    MetricsCallback,
    Precision,
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
from components.validate import normalise_text

logger = logging.getLogger(__name__)

CORPUS_SUFFIXES = (".txt", ".tsv")
TEXT_COLUMNS = ("text", "sentence")
NOT_NEXT = 1  # Hugging Face BERT: next_sentence_label 0 = B follows A, 1 = B is random


@dataclass(frozen=True)
class PretrainResult:
    """Where the pretrained model was written and how it went.

    Attributes:
        model_dir: Hugging Face folder that fine-tuning can start from.
        metrics: ``perplexity_before``, ``perplexity_after``, ``train_loss``, ``steps``,
            ``train_samples_per_second``, ...
        info: non-numeric facts (device, precision, base model, objective).
    """

    model_dir: Path
    metrics: dict[str, float]
    info: dict[str, str] = field(default_factory=dict)


def read_corpus(path: Path) -> list[str]:
    """Texts from a .txt file (one per non-empty line), a .tsv with a ``text`` or
    ``sentence`` column, or a folder of such files (read in name order)."""
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix in CORPUS_SUFFIXES)
        if not files:
            raise DataError(f"pretrain.extra_corpora: {path} holds no .txt or .tsv file")
        return [text for file in files for text in read_corpus(file)]
    if not path.is_file():
        raise DataError(f"pretrain.extra_corpora: {path} does not exist")
    if path.suffix == ".tsv":
        frame = pd.read_csv(path, sep="\t", quoting=3, dtype=str, keep_default_na=False)
        column = next((c for c in TEXT_COLUMNS if c in frame.columns), None)
        if column is None:
            raise DataError(f"{path} has no 'text' or 'sentence' column: {list(frame.columns)}")
        return [t.strip() for t in frame[column] if t.strip()]
    lines = path.read_text(encoding="utf-8").splitlines()
    return [line.strip() for line in lines if line.strip()]


def split_texts(
    texts: Sequence[str], eval_count: int, max_texts: int | None, seed: int
) -> tuple[list[str], list[str]]:
    """Shuffle with ``seed``, cap at ``max_texts``, hold out up to ``eval_count`` (at most
    a fifth) for perplexity."""
    shuffled = list(texts)
    random.Random(seed).shuffle(shuffled)
    if max_texts is not None:
        shuffled = shuffled[:max_texts]
    if len(shuffled) < 2:
        raise TrainingError(f"pretraining needs at least 2 texts, got {len(shuffled)}")
    held_out = max(1, min(eval_count, len(shuffled) // 5))
    return shuffled[held_out:], shuffled[:held_out]


def chunk_token_ids(ids_per_text: Sequence[Sequence[int]], window: int) -> list[list[int]]:
    """Cut each text's tokens into windows of at most ``window`` tokens (long reviews
    become several training sequences instead of being truncated)."""
    return [
        list(ids[start : start + window])
        for ids in ids_per_text
        for start in range(0, len(ids), window)
        if ids
    ]


def mask_tokens(
    input_ids: torch.Tensor,
    maskable: torch.Tensor,
    mask_token_id: int,
    vocab_size: int,
    probability: float,
    generator: torch.Generator,
) -> tuple[torch.Tensor, torch.Tensor]:
    """BERT masking: pick ``probability`` of the maskable tokens; 80% -> [MASK],
    10% -> a random token, 10% unchanged.

    Returns:
        (masked inputs, labels with -100 everywhere except the picked positions).
    """
    chosen = (torch.rand(input_ids.shape, generator=generator) < probability) & maskable
    labels = torch.where(chosen, input_ids, torch.full_like(input_ids, -100))
    draw = torch.rand(input_ids.shape, generator=generator)
    to_mask = chosen & (draw < 0.8)
    to_random = chosen & (draw >= 0.8) & (draw < 0.9)
    random_ids = torch.randint(vocab_size, input_ids.shape, generator=generator)
    masked = torch.where(to_mask, torch.full_like(input_ids, mask_token_id), input_ids)
    masked = torch.where(to_random, random_ids, masked)
    return masked, labels


def make_nsp_pairs(
    chunks: Sequence[Sequence[int]], seed: int
) -> list[tuple[list[int], list[int], int]]:
    """(segment A, segment B, label) per chunk: A and B are the chunk cut in two; half the
    time B is replaced by the second part of another random chunk (label ``NOT_NEXT``)."""
    rng = random.Random(seed)
    pairs = []
    for index, ids in enumerate(chunks):
        cut = rng.randint(1, max(len(ids) - 1, 1))
        first, second = list(ids[:cut]), list(ids[cut:])
        label = 0
        if not second or rng.random() < 0.5:
            other = chunks[rng.randrange(len(chunks))] if len(chunks) > 1 else ids
            if len(chunks) > 1 and other is chunks[index]:
                other = chunks[(index + 1) % len(chunks)]
            second, label = list(other[len(other) // 2 :] or other), NOT_NEXT
        pairs.append((first, second, label))
    return pairs


class MaskedLMBatches:
    """Token windows (or NSP pairs) as length-grouped batches, masked afresh every step."""

    def __init__(
        self,
        tokenizer: Any,
        chunks: list[list[int]],
        batch_size: int,
        probability: float,
        seed: int,
        context: DistributedContext | None = None,
        nsp: bool = False,
    ) -> None:
        self.tokenizer, self.probability, self.seed = tokenizer, probability, seed
        self.batch_size, self.context = batch_size, context or DistributedContext()
        cls_id, sep_id = tokenizer.cls_token_id, tokenizer.sep_token_id
        self.pairs = make_nsp_pairs(chunks, seed) if nsp else None
        if self.pairs is None:
            self.sequences = [[cls_id, *ids, sep_id] for ids in chunks]
        else:
            self.sequences = [[cls_id, *a, sep_id, *b, sep_id] for a, b, _ in self.pairs]
        self.lengths = [len(sequence) for sequence in self.sequences]

    def epoch_batches(self, epoch: int) -> list[list[int]]:
        return length_grouped_batches(
            self.lengths, self.batch_size, self.seed, epoch, True, self.context
        )

    def collate(self, indices: list[int], step: int) -> dict[str, torch.Tensor]:
        # Masking depends only on (seed, step, rank): resume-exact, different per rank.
        return self.masked_batch(indices, masking_generator(self.seed, step, self.context.rank))

    def masked_batch(
        self, indices: list[int], generator: torch.Generator
    ) -> dict[str, torch.Tensor]:
        batch = pad_batch([self.sequences[i] for i in indices], self.tokenizer.pad_token_id)
        ids = batch["input_ids"]
        maskable = batch["attention_mask"].bool()
        maskable &= (ids != self.tokenizer.cls_token_id) & (ids != self.tokenizer.sep_token_id)
        batch["input_ids"], batch["labels"] = mask_tokens(
            ids,
            maskable,
            self.tokenizer.mask_token_id,
            len(self.tokenizer),
            self.probability,
            generator,
        )
        if self.pairs is not None:
            token_types = torch.zeros_like(ids)
            for row, index in enumerate(indices):
                token_types[row, len(self.pairs[index][0]) + 2 : self.lengths[index]] = 1
            batch["token_type_ids"] = token_types
            batch["next_sentence_label"] = torch.tensor(
                [self.pairs[i][2] for i in indices], dtype=torch.long
            )
        return batch


def masking_generator(seed: int, step: int, rank: int) -> torch.Generator:
    state = np.random.SeedSequence([seed, step, rank]).generate_state(1)[0]
    return torch.Generator().manual_seed(int(state))


class MaskedPositionsObjective(nn.Module):
    """MLM (+NSP) loss of a BERT pretraining model with the vocabulary projection run
    only on the masked positions: ~15% of the tokens instead of all of them. For MiniLM
    the 30k-way projection costs about as much as the encoder, so this nearly halves the
    compute per step. Same loss value as the model's own forward."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    @staticmethod
    def supports(model: nn.Module) -> bool:
        head = getattr(model, "cls", None)
        return hasattr(model, "bert") and hasattr(head, "predictions")

    def forward(
        self,
        labels: torch.Tensor,
        next_sentence_label: torch.Tensor | None = None,
        **inputs: torch.Tensor,
    ) -> SimpleNamespace:
        encoder: Any = self.model.bert
        head: Any = self.model.cls
        encoded = encoder(**inputs)
        picked = labels != -100
        logits = head.predictions(encoded[0][picked])
        loss = nn.functional.cross_entropy(logits.float(), labels[picked])
        if next_sentence_label is not None:
            relationship = head.seq_relationship(encoded[1])
            loss = loss + nn.functional.cross_entropy(relationship.float(), next_sentence_label)
        return SimpleNamespace(loss=loss)


@torch.no_grad()
def masked_lm_perplexity(
    model: nn.Module, batches: MaskedLMBatches, batch_size: int, precision: Precision = "fp32"
) -> float:
    """exp(mean cross-entropy over masked tokens) with one fixed masking (seeded), so
    numbers before and after training are comparable."""
    device = next(model.parameters()).device
    model.eval()
    generator = torch.Generator().manual_seed(batches.seed)
    order = sorted(range(len(batches.sequences)), key=batches.lengths.__getitem__)
    loss_sum, count = 0.0, 0
    for start in range(0, len(order), batch_size):
        batch = batches.masked_batch(order[start : start + batch_size], generator)
        labels = batch.pop("labels").to(device)
        batch.pop("next_sentence_label", None)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
            output = model(**{k: v.to(device) for k, v in batch.items()})
        logits = getattr(output, "prediction_logits", None)
        logits = output.logits if logits is None else logits
        picked = labels != -100
        loss_sum += nn.functional.cross_entropy(
            logits[picked].float(), labels[picked], reduction="sum"
        ).item()
        count += int(picked.sum())
    return math.exp(loss_sum / max(count, 1))


def build_mlm_model(config: RatchetConfig, base: str, vocab_size: int) -> nn.Module:
    """The model to pretrain: ``model.base`` with an MLM (and NSP) head, or a fresh BERT
    sized by ``pretrain.scratch`` when ``pretrain.from_scratch``."""
    from transformers import (
        AutoConfig,
        AutoModelForMaskedLM,
        BertConfig,
        BertForMaskedLM,
        BertForPreTraining,
    )

    settings = config.pretrain
    if settings.from_scratch:
        scratch = settings.scratch
        if scratch.hidden_size % scratch.num_attention_heads:
            raise ConfigError(
                f"pretrain.scratch.hidden_size ({scratch.hidden_size}) must be divisible by "
                f"pretrain.scratch.num_attention_heads ({scratch.num_attention_heads})"
            )
        bert_config = BertConfig(
            vocab_size=vocab_size,
            max_position_embeddings=max(512, settings.max_length),
            **scratch.model_dump(),
        )
        return BertForPreTraining(bert_config) if settings.nsp else BertForMaskedLM(bert_config)
    if settings.nsp:
        if AutoConfig.from_pretrained(base).model_type != "bert":
            raise ConfigError("pretrain.nsp needs a BERT base model (model.base)")
        return BertForPreTraining.from_pretrained(base)
    model = AutoModelForMaskedLM.from_pretrained(base)
    logger.info("MLM head loaded or newly initialised from %s (a bare encoder has none)", base)
    return model


def base_parts_left_out(model: nn.Module, base: str) -> dict[str, nn.Module]:
    """The parts of ``base`` that the MLM model was built without, as loaded from ``base``.

    ``BertForMaskedLM`` builds its encoder without the pooler that BERT's [CLS]
    classification head starts from, so without these a fine-tune from the pretraining
    output would start that head from random weights where a fine-tune from the base
    starts from the base's. Parts the base's checkpoint does not hold (newly initialised
    on load) are left out. The base is loaded a second time only when the MLM model has
    an empty slot (not for NSP's ``BertForPreTraining``, DistilBERT or ELECTRA).
    """
    from transformers import AutoConfig, AutoModel

    encoder = getattr(model, "base_model", None)  # Hugging Face's own encoder lookup
    if not isinstance(encoder, nn.Module):
        return {}
    with torch.device("meta"):  # the bare encoder's layout, without allocating weights
        layout = AutoModel.from_config(AutoConfig.from_pretrained(base))
    empty = {name for name, _ in layout.named_children()} - {
        name for name, _ in encoder.named_children()
    }
    if not empty:
        return {}
    bare, loading = AutoModel.from_pretrained(base, output_loading_info=True)
    newly_initialised = set(loading.get("missing_keys", ()))
    parts = {}
    for name in sorted(empty):  # children of the layout, so the bare model has them
        part = getattr(bare, name)
        weights = [f"{name}.{key}" for key in part.state_dict()]
        if weights and not newly_initialised.intersection(weights):
            parts[name] = part
    return parts


def attach_parts(model: nn.Module, parts: dict[str, nn.Module]) -> None:
    """Put ``parts`` (from :func:`base_parts_left_out`) into the model's encoder, so that
    ``save_pretrained`` writes them; done after training, which never uses them."""
    encoder: nn.Module = getattr(model, "base_model", model)
    device = next(encoder.parameters()).device
    for name, part in parts.items():
        setattr(encoder, name, part.to(device))


def run_pretraining(
    config: RatchetConfig,
    texts: Sequence[str],
    output_dir: Path,
    checkpoint_dir: Path | None = None,
    on_metrics: MetricsCallback | None = None,
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

    Returns:
        The folder and metrics incl. ``perplexity_before`` and ``perplexity_after``.
    """
    from transformers import AutoTokenizer

    settings, runtime = config.pretrain, config.train
    base = resolve_base_model(config.model.base)  # relative to the working directory
    context = init_distributed()
    if runtime.num_threads:
        torch.set_num_threads(runtime.num_threads)
    seed_everything(settings.seed, runtime.deterministic)
    tokenizer = AutoTokenizer.from_pretrained(base)
    train_texts, eval_texts = split_texts(
        texts, settings.eval_texts, settings.max_texts, settings.seed
    )
    window = settings.max_length - (3 if settings.nsp else 2)

    def windows(selected: list[str]) -> list[list[int]]:
        ids = tokenizer(selected, add_special_tokens=False, verbose=False)["input_ids"]
        return chunk_token_ids(ids, window)

    source = MaskedLMBatches(
        tokenizer,
        windows(train_texts),
        settings.batch_size,
        settings.mlm_probability,
        settings.seed,
        context,
        settings.nsp,
    )
    held_out = MaskedLMBatches(
        tokenizer, windows(eval_texts), 1, settings.mlm_probability, settings.seed, nsp=False
    )
    device = choose_device(context)
    if checkpoint_dir is not None:
        claim_checkpoint_dir(checkpoint_dir, pretrain_resume_key(config, texts, base))
    precision = run_precision(
        runtime.precision, device, runtime.deterministic, checkpoint_dir, context
    )
    model = build_mlm_model(config, base, len(tokenizer)).to(device)
    # Loaded before training, so a base that cannot be read again fails before any compute.
    kept_parts = {} if settings.from_scratch else base_parts_left_out(model, base)
    perplexity_before = masked_lm_perplexity(model, held_out, settings.batch_size, precision)
    if context.enabled:
        torch.manual_seed(settings.seed + context.rank)
    loop_settings = LoopSettings(
        total_steps=settings.max_steps,
        lr=settings.lr,
        weight_decay=settings.weight_decay,
        warmup_fraction=settings.warmup_fraction,
        checkpoint_every_steps=runtime.checkpoint_every_steps,
        checkpoint_every_minutes=runtime.checkpoint_every_minutes,
        seed=settings.seed,
        precision=precision,
        compile=runtime.compile,
        cpu_speedups=runtime.cpu_speedups,
        description="pretrain",
    )
    objective = (
        MaskedPositionsObjective(model) if MaskedPositionsObjective.supports(model) else model
    )
    outcome = run_loop(
        objective,
        source,
        loop_settings,
        checkpoint_dir=checkpoint_dir,
        on_metrics=on_metrics,
        context=context,
    )
    perplexity_after = masked_lm_perplexity(model, held_out, settings.batch_size, precision)
    if context.is_main:
        if kept_parts:
            attach_parts(model, kept_parts)
            logger.info("kept the base model's %s in the output", ", ".join(kept_parts))
        save_model_atomically(model, tokenizer, output_dir)
        if checkpoint_dir is not None:
            clear_checkpoints(checkpoint_dir)
    metrics = {
        **outcome.metrics,
        "perplexity_before": perplexity_before,
        "perplexity_after": perplexity_after,
        "train_sequences": float(len(source.sequences)),
        "eval_sequences": float(len(held_out.sequences)),
    }
    logger.info(
        "pretrained %d steps: validation perplexity %.2f -> %.2f",
        outcome.state.step,
        perplexity_before,
        perplexity_after,
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

    partial = output_dir.parent / f".{output_dir.name}.tmp-copy"
    shutil.rmtree(partial, ignore_errors=True)
    if Path(base).is_dir():
        shutil.copytree(base, partial)
    else:
        AutoModel.from_pretrained(base).save_pretrained(partial)
        AutoTokenizer.from_pretrained(base).save_pretrained(partial)
    shutil.rmtree(output_dir, ignore_errors=True)
    os.replace(partial, output_dir)


def pretrain_resume_key(config: RatchetConfig, texts: Sequence[str], base: str) -> str:
    """The resume key of a pretraining run: its settings, the texts it reads and the
    fingerprint of the model it starts from (none when from scratch)."""
    start = "from-scratch" if config.pretrain.from_scratch else model_fingerprint(base)
    return resume_key(config, texts_fingerprint(texts), start)


def corpora_fingerprint(config: RatchetConfig, paths: ProjectPaths) -> str:
    """Content fingerprint of ``pretrain.extra_corpora`` (every file's bytes, in order);
    a corpus edited in place changes it, a corpus moved elsewhere does not.

    Raises:
        DataError: a corpus does not exist.
    """
    fingerprints = []
    for corpus in config.pretrain.extra_corpora:
        path = paths.resolve(corpus)
        if not path.exists():
            raise DataError(f"pretrain.extra_corpora: {path} does not exist")
        fingerprints.append(path_fingerprint(path))
    return "+".join(fingerprints)


@dataclass(frozen=True)
class PretrainingCorpus:
    """The texts pretraining reads, and how many corpus texts were left out as held out.

    Attributes:
        texts: the training split's texts, then the extra corpora's.
        held_out_dropped: corpus texts equal (after ``normalise_text``) to a validation or
            test text, left out so that masked-LM training never sees the texts the
            model is selected and scored on.
    """

    texts: list[str]
    held_out_dropped: int = 0

    @property
    def metrics(self) -> dict[str, float]:
        return {"corpus_held_out_dropped": float(self.held_out_dropped)}


def drop_held_out_texts(texts: Sequence[str], held_out: Sequence[str]) -> tuple[list[str], int]:
    """``texts`` without those equal to a ``held_out`` text after ``normalise_text``
    (case, Unicode form and whitespace do not hide a copy); returns (kept, dropped)."""
    held_out_keys = {normalise_text(text) for text in held_out}
    kept = [text for text in texts if normalise_text(text) not in held_out_keys]
    return kept, len(texts) - len(kept)


def gather_pretraining_texts(config: RatchetConfig, paths: ProjectPaths) -> PretrainingCorpus:
    """The prepared training split's texts followed by every ``pretrain.extra_corpora``,
    less the corpus texts that repeat a validation or test text (counted and logged)."""
    prepared = load_prepared(paths.prepared_dir)
    texts = prepared.train["text"].tolist()
    held_out = [*prepared.validation["text"], *prepared.test["text"]]
    dropped = 0
    for corpus in config.pretrain.extra_corpora:
        extra, repeats = drop_held_out_texts(read_corpus(paths.resolve(corpus)), held_out)
        logger.info("extra corpus %s: %d texts", corpus, len(extra))
        if repeats:
            logger.warning(
                "extra corpus %s: left out %d texts that repeat a validation or test "
                "text (pretraining on them would leak the held-out splits)",
                corpus,
                repeats,
            )
        texts.extend(extra)
        dropped += repeats
    return PretrainingCorpus(texts, dropped)


def run_pretrain_stage(
    config: RatchetConfig, paths: ProjectPaths, on_metrics: MetricsCallback | None = None
) -> PretrainResult:
    """The ``pretrain`` stage: data/prepared (+ corpora) -> models/pretrained and
    metrics/pretrain.json. With ``pretrain.enabled: false`` the base is copied instead."""
    output_dir = paths.models_dir / PRETRAINED_DIR_NAME
    if not config.pretrain.enabled:
        base = resolve_base_model(config.model.base, paths.project_root)
        if is_main_process():
            copy_base_model(base, output_dir)
        result = PretrainResult(output_dir, {}, {"base_model": base, "objective": "none"})
    else:
        base = resolve_base_model(config.model.base, paths.project_root)
        start = "from-scratch" if config.pretrain.from_scratch else model_fingerprint(base)
        key = run_key(config, paths, start, corpora_fingerprint(config, paths))
        checkpoints = paths.checkpoints_dir / f"pretrain-{key}"
        corpus = gather_pretraining_texts(config, paths)
        trained = run_pretraining(config, corpus.texts, output_dir, checkpoints, on_metrics)
        result = replace(trained, metrics={**trained.metrics, **corpus.metrics})
    if is_main_process():
        write_metrics(paths.metrics_dir / "pretrain.json", result.metrics, result.info)
    return result
