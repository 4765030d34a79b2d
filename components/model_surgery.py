"""Model surgery before fine-tuning: frozen lower layers and layer-wise learning rates.

The encoder's blocks and embeddings are found by the attribute names Hugging Face
architectures use (BERT, RoBERTa, DistilBERT, ELECTRA, ...).
"""

from __future__ import annotations

import logging
from typing import Any

from torch import nn

from components.config import TrainConfig
from components.errors import ConfigError

logger = logging.getLogger(__name__)


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


def prepare_for_finetuning(model: nn.Module, train_cfg: TrainConfig) -> dict[str, float] | None:
    """Freeze ``model``'s lower weights as ``train.freeze_*`` ask and return the
    learning-rate scales of ``train.layer_lr_decay`` (None without layer-wise decay)."""
    trainable = freeze_lower_weights(model, train_cfg.freeze_embeddings, train_cfg.freeze_layers)
    total = sum(weight.numel() for weight in model.parameters())
    logger.info("fine-tuning %d of %d weights", trainable, total)
    if train_cfg.layer_lr_decay < 1:
        return layerwise_lr_scales(model, train_cfg.layer_lr_decay)
    return None
