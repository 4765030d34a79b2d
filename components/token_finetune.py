"""Fine-tune a token classifier (named entities) in Ratchet's own training loop.

    ratchet --config configs/conll.yaml train     # data.task: token-classification

The task-specific pieces beside the sequence classifier's (:mod:`components.finetune_run`):
words are encoded with the base tokenizer and each word's tag goes to its first sub-token
(the other sub-tokens and the special tokens get -100, which the loss ignores);
:class:`TokenBatches` pads ids and labels per batch; the head is
``AutoModelForTokenClassification`` with the tag set as ``id2label``; the validation
score is the entity-level micro-F1 (seqeval, strict IOB2), which early stopping and
``train.keep: best`` use. The loop (:mod:`components.training.loop`) is the shared one:
length grouping, dynamic padding, bf16 where native, accumulation, checkpoints with
exact resume.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from components.config import RatchetConfig
from components.errors import TrainingError
from components.finetune_run import (
    FinetuneJob,
    FinetuneResult,
    FitPlan,
    RunPlace,
    fit_and_save,
    select_rows,
)
from components.model_surgery import prepare_for_finetuning
from components.prepare import PreparedData
from components.training.batching import length_grouped_batches, pad_batch
from components.training.runtime import DistributedContext, Precision, choose_device
from components.training.stage import start_run

logger = logging.getLogger(__name__)

IGNORED = -100  # label of sub-tokens the loss and the scores skip
METRIC_NAME = "val_entity_f1"


@dataclass(frozen=True)
class EncodedWords:
    """Sentences as sub-token ids, with where each word starts.

    Attributes:
        input_ids: per sentence, sub-token ids with special tokens, truncated.
        first_positions: per sentence, the position of each kept word's first sub-token
            (words cut off by the window, or with no sub-token, are absent).
        word_indices: per sentence, the word index of each entry of ``first_positions``.
        labels: per sentence and sub-token, the word's tag id at its first sub-token and
            -100 elsewhere (all -100 when encoded without tags).
    """

    input_ids: list[list[int]]
    first_positions: list[list[int]]
    word_indices: list[list[int]]
    labels: list[list[int]]


def encode_words(
    tokenizer: Any,
    sentences: Sequence[Sequence[str]],
    tag_ids: Sequence[Sequence[int]] | None,
    max_length: int,
) -> EncodedWords:
    """Tokenise pre-split words and align tags to each word's first sub-token.

    Args:
        tokenizer: a fast tokenizer (``word_ids`` is needed).
        sentences: the words of each sentence.
        tag_ids: the tag id of each word, or None (prediction only).
        max_length: the token window (``model.max_length``).
    """
    encoded = tokenizer(
        [list(words) for words in sentences],
        is_split_into_words=True,
        truncation=True,
        max_length=max_length,
    )
    firsts, indices, labels = [], [], []
    for row in range(len(sentences)):
        word_ids = encoded.word_ids(row)
        positions, words = [], []
        for position, word in enumerate(word_ids):
            if word is not None and (position == 0 or word_ids[position - 1] != word):
                positions.append(position)
                words.append(word)
        row_labels = [IGNORED] * len(word_ids)
        if tag_ids is not None:
            for position, word in zip(positions, words, strict=True):
                row_labels[position] = int(tag_ids[row][word])
        firsts.append(positions)
        indices.append(words)
        labels.append(row_labels)
    return EncodedWords(list(encoded["input_ids"]), firsts, indices, labels)


class TokenBatches:
    """Encoded sentences served as length-grouped batches, ids and labels padded per batch."""

    def __init__(
        self,
        encoded: EncodedWords,
        batch_size: int,
        seed: int,
        pad_id: int,
        grouped: bool = True,
        context: DistributedContext | None = None,
        pad_multiple: int = 1,
    ) -> None:
        self.encoded = encoded
        self.lengths = [len(ids) for ids in encoded.input_ids]
        self.batch_size, self.seed, self.pad_id = batch_size, seed, pad_id
        self.grouped, self.context, self.pad_multiple = grouped, context, pad_multiple

    def epoch_batches(self, epoch: int) -> list[list[int]]:
        return length_grouped_batches(
            self.lengths, self.batch_size, self.seed, epoch, self.grouped, self.context
        )

    def collate(self, indices: list[int], step: int) -> dict[str, torch.Tensor]:
        return collate_words(self.encoded, indices, self.pad_id, self.pad_multiple)


def collate_words(
    encoded: EncodedWords, indices: Sequence[int], pad_id: int, pad_multiple: int = 1
) -> dict[str, torch.Tensor]:
    """Model inputs for the sentences at ``indices``: padded ids, mask and labels (-100)."""
    batch = pad_batch([encoded.input_ids[i] for i in indices], pad_id, pad_multiple)
    labels = torch.full_like(batch["input_ids"], IGNORED)
    for row, index in enumerate(indices):
        labels[row, : len(encoded.labels[index])] = torch.as_tensor(encoded.labels[index])
    batch["labels"] = labels
    return batch


@torch.no_grad()
def predict_word_tags(
    model: nn.Module,
    encoded: EncodedWords,
    word_counts: Sequence[int],
    batch_size: int,
    pad_id: int,
    precision: Precision = "fp32",
) -> tuple[list[list[int]], float]:
    """Each word's predicted tag id (its first sub-token's argmax; 0, i.e. ``O``, for
    words the window cut off), and the summed cross-entropy over labelled sub-tokens."""
    device = next(model.parameters()).device
    model.eval()
    predicted: list[list[int]] = [[0] * count for count in word_counts]
    order = sorted(range(len(encoded.input_ids)), key=lambda i: len(encoded.input_ids[i]))
    loss_sum = 0.0
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        batch = {k: v.to(device) for k, v in collate_words(encoded, chunk, pad_id).items()}
        labels = batch.pop("labels")
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
            logits = model(**batch).logits.float()
        loss_sum += nn.functional.cross_entropy(
            logits.flatten(0, 1), labels.flatten(), ignore_index=IGNORED, reduction="sum"
        ).item()
        best = logits.argmax(-1).cpu()
        for row, index in enumerate(chunk):
            positions = encoded.first_positions[index]
            for position, word in zip(positions, encoded.word_indices[index], strict=True):
                predicted[index][word] = int(best[row, position])
    return predicted, loss_sum


def entity_scores(gold: Sequence[Sequence[str]], predicted: Sequence[Sequence[str]]) -> dict:
    """Entity-level micro precision/recall/F1 (seqeval, strict IOB2) and word accuracy."""
    from seqeval.metrics import f1_score, precision_score, recall_score
    from seqeval.scheme import IOB2

    gold_lists, predicted_lists = [list(g) for g in gold], [list(p) for p in predicted]
    options: dict[str, Any] = {"mode": "strict", "scheme": IOB2, "zero_division": 0}
    words = sum(len(g) for g in gold_lists)
    correct = sum(
        g == p
        for gs, ps in zip(gold_lists, predicted_lists, strict=True)
        for g, p in zip(gs, ps, strict=True)
    )
    return {
        "entity_precision": float(precision_score(gold_lists, predicted_lists, **options)),
        "entity_recall": float(recall_score(gold_lists, predicted_lists, **options)),
        "entity_f1": float(f1_score(gold_lists, predicted_lists, **options)),
        "token_accuracy": correct / words if words else 0.0,
    }


class TokenValidationScorer:
    """Scores a token classifier on the validation sentences (the loop's ``evaluate``):
    ``val_entity_f1`` (early stopping, best weights), ``val_accuracy`` (per word) and
    ``val_loss`` (per labelled sub-token)."""

    def __init__(
        self,
        encoded: EncodedWords,
        gold: list[list[str]],
        labels: list[str],
        batch_size: int,
        pad_id: int,
        precision: Precision,
    ) -> None:
        self.encoded, self.gold, self.labels = encoded.input_ids, gold, labels
        self.words, self.batch_size = encoded, batch_size
        self.pad_id, self.precision = pad_id, precision

    def __call__(self, model: nn.Module) -> dict[str, float]:
        predicted_ids, loss_sum = predict_word_tags(
            model,
            self.words,
            [len(g) for g in self.gold],
            self.batch_size,
            self.pad_id,
            self.precision,
        )
        predicted = [[self.labels[i] for i in ids] for ids in predicted_ids]
        scores = entity_scores(self.gold, predicted)
        labelled = sum(sum(label != IGNORED for label in row) for row in self.words.labels)
        return {
            METRIC_NAME: scores["entity_f1"],
            "val_accuracy": scores["token_accuracy"],
            "val_loss": loss_sum / max(labelled, 1),
        }


def check_token_inputs(config: RatchetConfig, data: PreparedData) -> None:
    """Fail before any compute on settings or data a token classifier cannot train on.

    Raises:
        TrainingError: an empty split, or tag ids outside the tag set.
    """
    for name in ("train", "validation"):
        frame = data.split(name)
        if frame.empty:
            raise TrainingError(f"the prepared {name} split is empty")
        top = max((max(ids, default=0) for ids in frame["tag_ids"]), default=0)
        if top >= len(data.labels):
            raise TrainingError(
                f"{name} sentences have tag id {top} outside the {len(data.labels)} tags"
            )


def token_validation_scorer(
    config: RatchetConfig,
    data: PreparedData,
    tokenizer: Any,
    precision: Precision,
    rows_seed: int,
) -> TokenValidationScorer:
    """The scorer of the validation sentences a run with ``rows_seed`` selects on (all of
    them, or ``train.max_eval_samples`` picked with that seed)."""
    rows = select_rows(data.validation, config.train.max_eval_samples, rows_seed)
    words = encode_words(
        tokenizer, rows["tokens"].tolist(), rows["tag_ids"].tolist(), config.model.max_length
    )
    return TokenValidationScorer(
        words,
        [list(tags) for tags in rows["tags"]],
        data.labels,
        config.eval.batch_size,
        tokenizer.pad_token_id,
        precision,
    )


def score_saved_token_model(
    config: RatchetConfig, data: PreparedData, model_dir: Path, precision: Precision
) -> dict[str, float]:
    """``val_entity_f1``, ``val_accuracy`` and ``val_loss`` of a saved token classifier on
    the validation sentences the run with ``train.seed`` scored (a soup's members scored
    the same ones), at the ``precision`` the run decided on."""
    from transformers import AutoModelForTokenClassification, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    score = token_validation_scorer(config, data, tokenizer, precision, config.train.seed)
    model = AutoModelForTokenClassification.from_pretrained(model_dir).to(choose_device())
    return score(model)


def build_token_classifier(
    config: RatchetConfig, labels: list[str], init_model: str
) -> tuple[nn.Module, dict[str, float] | None]:
    """``AutoModelForTokenClassification`` from ``init_model`` with ``id2label``, lower
    layers frozen and layer-wise learning rates as ``train.*`` ask."""
    from transformers import AutoModelForTokenClassification

    train_cfg = config.train
    model = AutoModelForTokenClassification.from_pretrained(
        init_model,
        num_labels=len(labels),
        id2label=dict(enumerate(labels)),
        label2id={name: index for index, name in enumerate(labels)},
    )
    return model, prepare_for_finetuning(model, train_cfg)


def finetune_tokens_once(
    job: FinetuneJob,
    start_seed: int | None = None,
    on_saved: Callable[[FinetuneResult], None] | None = None,
) -> FinetuneResult:
    """One token-classifier fine-tuning run with ``train.seed``; see the module header.

    ``start_seed`` (what a soup's members share: the sentences picked and the tagging
    head's initial weights) and ``on_saved`` (a soup records its finished member there)
    are those of :func:`components.finetune_run.finetune_once`.

    Returns:
        The output folder and metrics (``val_entity_f1``, ``val_accuracy``, ``val_loss``
        of the kept weights, throughput).
    """
    from transformers import AutoTokenizer

    config, data, init_model = job.config, job.data, job.init_model
    check_token_inputs(config, data)
    train_cfg, max_length = config.train, config.model.max_length
    context, device, precision = start_run(train_cfg.seed, train_cfg, job.checkpoint_dir)
    tokenizer = AutoTokenizer.from_pretrained(init_model)
    start_seed = train_cfg.seed if start_seed is None else start_seed
    train_rows = select_rows(data.train, train_cfg.max_train_samples, start_seed)
    train_words = encode_words(
        tokenizer, train_rows["tokens"].tolist(), train_rows["tag_ids"].tolist(), max_length
    )
    score = token_validation_scorer(config, data, tokenizer, precision, start_seed)
    source = TokenBatches(
        train_words,
        train_cfg.batch_size,
        train_cfg.seed,
        tokenizer.pad_token_id,
        train_cfg.length_grouped,
        context,
        pad_multiple=8 if device.type == "cuda" else 1,
    )
    if start_seed != train_cfg.seed:
        torch.manual_seed(start_seed)  # a soup's members start from the same head
    model, lr_scales = build_token_classifier(config, data.labels, init_model)
    if context.enabled or start_seed != train_cfg.seed:
        # Same init everywhere, own dropout per rank and per soup member.
        torch.manual_seed(train_cfg.seed + context.rank)
    plan = FitPlan(model, lr_scales, source, score, METRIC_NAME, len(train_rows))
    run = RunPlace(
        init_model, job.output_dir, job.checkpoint_dir, job.on_metrics, context, precision
    )
    return fit_and_save(config, plan, tokenizer, run, on_saved)
