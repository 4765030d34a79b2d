"""The optimiser and learning-rate schedule: AdamW (BERT's recipe), linear warm-up/decay."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn


def linear_schedule(
    optimizer: torch.optim.Optimizer, warmup_steps: int, total_steps: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up from 0 to the peak LR over ``warmup_steps``, then linear decay to 0."""

    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: linear_lr_factor(step, warmup_steps, total_steps)
    )


def linear_lr_factor(step: int, warmup_steps: int, total_steps: int) -> float:
    if step < warmup_steps:
        return (step + 1) / (warmup_steps + 1)
    remaining = max(total_steps - warmup_steps, 1)
    return max(0.0, (total_steps - step) / remaining)


def build_optimizer(
    model: nn.Module,
    lr: float,
    weight_decay: float,
    device: torch.device,
    lr_scales: Mapping[str, float] | None = None,
) -> torch.optim.AdamW:
    """AdamW without decay on biases and LayerNorm weights (BERT recipe); fused kernel
    where torch has one for the device.

    ``lr_scales`` multiplies the learning rate per parameter name (1 where absent), e.g.
    layer-wise decay. Groups are ordered by falling rate, decayed before not decayed, so
    the order (which a resumed optimiser state relies on) is fixed and group 0 carries
    the peak rate.
    """
    groups: dict[tuple[float, bool], list[nn.Parameter]] = {}
    for name, parameter in model.named_parameters():
        if not parameter.requires_grad:
            continue
        no_decay = parameter.ndim < 2 or "LayerNorm" in name
        scale = lr_scales.get(name, 1.0) if lr_scales is not None else 1.0
        groups.setdefault((scale, no_decay), []).append(parameter)
    ordered = sorted(groups.items(), key=lambda item: (-item[0][0], item[0][1]))
    return torch.optim.AdamW(
        [
            {"params": params, "lr": lr * scale, "weight_decay": 0.0 if no_decay else weight_decay}
            for (scale, no_decay), params in ordered
        ],
        lr=lr,
        fused=device.type in ("cuda", "cpu"),
    )
