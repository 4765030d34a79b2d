"""A BERT sequence classifier that mean-pools the encoder's last hidden states.

``AutoModelForSequenceClassification`` classifies BERT models from the [CLS] token through
BERT's pooler. Sentence-transformers models such as the shipped all-MiniLM-L6-v2 were
trained to summarise a text by the mean of its token states instead, and their [CLS] state
was never trained to carry the sentence. ``model.pooling: mean`` fine-tunes this class.

Importing this module registers the class with the ``transformers`` Auto classes, so a
saved mean-pooling model loads with ``AutoModelForSequenceClassification.from_pretrained``
like any other. Every Ratchet loader imports it (evaluation, the MLflow model, the Bento).
It imports nothing from Ratchet, so the MLflow model can ship it as a standalone file.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from transformers import (
    AutoConfig,
    AutoModelForSequenceClassification,
    BertConfig,
    BertModel,
    BertPreTrainedModel,
    PreTrainedModel,
)
from transformers.modeling_outputs import SequenceClassifierOutput

MEAN_POOLING_MODEL_TYPE = "ratchet_bert_mean_pooling"
POOLINGS = ("cls", "mean")


class MeanPoolingBertConfig(BertConfig):
    """A BERT config whose ``model_type`` routes the Auto classes to the mean-pooling head."""

    model_type = MEAN_POOLING_MODEL_TYPE


class MeanPoolingBertForSequenceClassification(BertPreTrainedModel):
    """BERT encoder, mean over the non-padding tokens, dropout, linear classifier.

    The weights are named as in ``BertForSequenceClassification`` (``bert.*``,
    ``classifier.*``; no pooler), so any BERT checkpoint initialises the encoder.
    """

    config_class = MeanPoolingBertConfig

    def __init__(self, config: MeanPoolingBertConfig) -> None:
        super().__init__(config)
        self.num_labels = int(config.num_labels or 2)  # BERT's config defaults to two
        self.bert = BertModel(config, add_pooling_layer=False)
        dropout = config.classifier_dropout
        self.dropout = nn.Dropout(config.hidden_dropout_prob if dropout is None else dropout)
        self.classifier = nn.Linear(config.hidden_size, self.num_labels)
        self.post_init()

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        **kwargs: Any,
    ) -> SequenceClassifierOutput:
        hidden = self.bert(
            input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids
        ).last_hidden_state
        if attention_mask is None:
            attention_mask = torch.ones(hidden.shape[:2], device=hidden.device)
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)
        logits = self.classifier(self.dropout(pooled))
        loss = None
        if labels is not None:
            loss = nn.functional.cross_entropy(logits.view(-1, self.num_labels), labels.view(-1))
        return SequenceClassifierOutput(loss=loss, logits=logits)


AutoConfig.register(MEAN_POOLING_MODEL_TYPE, MeanPoolingBertConfig, exist_ok=True)
AutoModelForSequenceClassification.register(
    MeanPoolingBertConfig, MeanPoolingBertForSequenceClassification, exist_ok=True
)


def mean_pooling_problem(init_model: str, model_type: str | None = None) -> str | None:
    """Why ``model.pooling: mean`` cannot start from ``init_model``, or None if it can
    (``model_type``: the model's, when the caller has already read its config)."""
    found = model_type or AutoConfig.from_pretrained(init_model).model_type
    if found in ("bert", MEAN_POOLING_MODEL_TYPE):
        return None
    return (
        f"model.pooling: mean needs a BERT-architecture model, but {init_model} is a "
        f"{found!r} model; use model.pooling: cls"
    )


def classifier_from_pretrained(
    init_model: str, pooling: str, **config_kwargs: Any
) -> PreTrainedModel:
    """A sequence classifier initialised from ``init_model`` (a folder or hub id).

    Args:
        init_model: any Hugging Face model; for ``pooling="mean"`` a BERT-architecture one.
        pooling: ``cls`` (the architecture's own head) or ``mean``.
        config_kwargs: ``num_labels``, ``id2label``, ``label2id``.

    Raises:
        ValueError: an unknown pooling, or ``mean`` for a model that is not a BERT.
    """
    if pooling not in POOLINGS:
        raise ValueError(f"model.pooling must be one of {POOLINGS}, got {pooling!r}")
    if pooling == "cls":
        return AutoModelForSequenceClassification.from_pretrained(init_model, **config_kwargs)
    settings = AutoConfig.from_pretrained(init_model).to_dict()
    # The class's own model_type routes the Auto classes; the base's only gates the head.
    problem = mean_pooling_problem(init_model, settings.pop("model_type", None))
    if problem:
        raise ValueError(problem)
    config = MeanPoolingBertConfig.from_dict(settings, **config_kwargs)
    return MeanPoolingBertForSequenceClassification.from_pretrained(init_model, config=config)
