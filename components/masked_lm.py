"""The masked-language-model objective: BERT masking, NSP pairs, batches and perplexity.

Masking is dynamic (a fresh 15% of tokens each time a text is seen; 80% of those become
[MASK], 10% a random token, 10% stay) and derived from (seed, step, rank), so a resumed
run masks exactly as an uninterrupted one. Validation perplexity on held-out texts is
measured with one fixed masking. With ``pretrain.nsp`` the model is a
``BertForPreTraining`` that also learns BERT's next-sentence prediction.
"""

from __future__ import annotations

import logging
import math
import random
from collections.abc import Sequence
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch
from torch import nn

from components.config import RatchetConfig
from components.errors import ConfigError
from components.training.batching import length_grouped_batches, pad_batch
from components.training.runtime import DistributedContext, Precision

logger = logging.getLogger(__name__)

NOT_NEXT = 1  # Hugging Face BERT: next_sentence_label 0 = B follows A, 1 = B is random


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
