"""Compute the last encoder layer at the first ([CLS]) position only.

A [CLS]-pooling sequence classifier (BERT's pooler, RoBERTa's head) reads a single vector
of the encoder's output: the last layer's state at position 0. That state needs the keys
and values of every position, but the last layer's query, attention output, feed-forward
block and layer norms are needed at position 0 alone. Computing them there only leaves
the logits, the loss and every gradient unchanged (up to float rounding) and skips about
5/6 of the last layer: about 14% of a 6-layer encoder's matrix products.

The last layer's dropouts then draw fewer random numbers, so a run's dropout stream
differs from a whole-layer run's. Mean pooling reads every position and is left alone.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

logger = logging.getLogger(__name__)

# Heads that read the encoder's output at position 0 and nowhere else.
FIRST_POSITION_HEADS = ("BertForSequenceClassification", "RobertaForSequenceClassification")
# Attention functions that take a 4-D mask sliced to one query row.
SLICEABLE_ATTENTION = ("eager", "sdpa")


class FirstPositionLayer(nn.Module):
    """A BERT-style encoder layer evaluated for the first position's query only.

    Holds the whole layer's submodules under their own names, so the model's parameter
    names, state dict and optimiser groups stay as they were. Returns ``[batch, 1, hidden]``.
    """

    # Typed Any: Hugging Face's submodules, reached by attribute.
    attention: Any
    intermediate: Any
    output: Any

    def __init__(self, layer: Any) -> None:
        super().__init__()
        self.attention = layer.attention
        self.intermediate = layer.intermediate
        self.output = layer.output

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        *_: Any,
        **__: Any,
    ) -> torch.Tensor:
        from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
        from transformers.models.bert.modeling_bert import eager_attention_forward

        attention = self.attention.self
        batch = hidden_states.shape[0]
        first = hidden_states[:, :1]

        def heads(states: torch.Tensor) -> torch.Tensor:
            return states.view(batch, states.shape[1], -1, attention.attention_head_size).transpose(
                1, 2
            )

        attend = ALL_ATTENTION_FUNCTIONS.get_interface(
            attention.config._attn_implementation, eager_attention_forward
        )
        context, _ = attend(
            attention,
            heads(attention.query(first)),
            heads(attention.key(hidden_states)),
            heads(attention.value(hidden_states)),
            # [batch, 1, queries, keys]: keep the first query's row.
            None if attention_mask is None else attention_mask[:, :, :1],
            dropout=attention.dropout.p if attention.training else 0.0,
            scaling=attention.scaling,
        )
        attended = self.attention.output(context.reshape(batch, 1, -1), first)
        return self.output(self.intermediate(attended), attended)


def unsupported_reason(model: nn.Module) -> str | None:
    """Why ``model``'s last layer cannot be cut to the first position, or None if it can."""
    if type(model).__name__ not in FIRST_POSITION_HEADS:
        return f"{type(model).__name__} may read positions other than the first"
    config: Any = model.config
    implementation = getattr(config, "_attn_implementation", None)
    if implementation not in SLICEABLE_ATTENTION:
        return f"attention implementation {implementation!r}"
    if config.is_decoder or config.output_hidden_states or config.output_attentions:
        return "the model is a decoder or returns every layer's states"
    base: Any = model.base_model
    layers = getattr(getattr(base, "encoder", None), "layer", None)
    if not isinstance(layers, nn.ModuleList) or len(layers) == 0:
        return "no encoder layer list"
    last = layers[-1]
    if hasattr(last, "crossattention") or not all(
        hasattr(last, name) for name in ("attention", "intermediate", "output")
    ):
        return f"{type(last).__name__} is not a BERT-style layer"
    return None


def cut_last_layer(model: nn.Module) -> Callable[[], None] | None:
    """Make ``model``'s last encoder layer compute position 0 only, where that is exact.

    Returns:
        A function that puts the whole layer back, or None when the model was left as it
        was (its head may read other positions, or its layers are not BERT's).
    """
    reason = unsupported_reason(model)
    if reason is not None:
        logger.debug("last layer left whole: %s", reason)
        return None
    base: Any = model.base_model
    layers = base.encoder.layer
    whole = layers[-1]
    layers[-1] = FirstPositionLayer(whole)

    def restore() -> None:
        layers[-1] = whole

    return restore


@contextmanager
def last_layer_at_first_position(model: nn.Module, enabled: bool = True) -> Iterator[bool]:
    """Within the block, ``model``'s last layer computes position 0 only (when ``enabled``
    and exact for this model); yields whether it does. The whole layer is back afterwards."""
    restore = cut_last_layer(model) if enabled else None
    try:
        yield restore is not None
    finally:
        if restore is not None:
            restore()
