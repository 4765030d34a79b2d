"""Length-grouped batches of example indices and their dynamic padding.

The batch order is a pure function of (seed, epoch), so a resumed run sees the batches an
uninterrupted one would have.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch

from components.errors import TrainingError
from components.training.runtime import DistributedContext

# Trainer's LengthGroupedSampler uses megabatches of 50 batches; bigger ones pad less but
# make batch contents less random.
MEGABATCH_FACTOR = 50


class BatchSource(Protocol):
    """What the loop needs from a data set: per-epoch batches and a collate function."""

    def epoch_batches(self, epoch: int) -> list[list[int]]:
        """This rank's batches of example indices for ``epoch`` (pure in seed and epoch)."""
        ...

    def collate(self, indices: list[int], step: int) -> dict[str, torch.Tensor]:
        """Model inputs (with labels) for one micro-batch at optimiser step ``step``."""
        ...


def length_grouped_batches(
    lengths: Sequence[int],
    batch_size: int,
    seed: int,
    epoch: int,
    grouped: bool = True,
    context: DistributedContext | None = None,
) -> list[list[int]]:
    """This rank's batches of example indices for one epoch: a pure function of the inputs.

    Indices are shuffled with (seed, epoch); when ``grouped``, each megabatch of
    ``50 * batch_size`` is sorted by length before being cut, so a batch holds texts of
    similar length and dynamic padding wastes little. Batch order is shuffled again so
    long and short batches alternate. Under DDP the batch list is cut to a multiple of
    the world size and dealt round-robin, so every rank takes the same number of steps.
    """
    if batch_size < 1:
        raise TrainingError(f"batch size must be at least 1, got {batch_size}")
    context = context or DistributedContext()
    rng = np.random.default_rng([seed, epoch])
    order = rng.permutation(len(lengths))
    if grouped:
        megabatch = batch_size * MEGABATCH_FACTOR
        order = np.concatenate(
            [
                chunk[np.argsort([-lengths[i] for i in chunk], kind="stable")]
                for chunk in np.split(order, range(megabatch, len(order), megabatch))
            ]
        )
    batches = [order[i : i + batch_size].tolist() for i in range(0, len(order), batch_size)]
    if grouped:
        batches = [batches[i] for i in rng.permutation(len(batches))]
    usable = len(batches) - len(batches) % context.world_size
    return batches[context.rank : usable : context.world_size]


@dataclass(frozen=True)
class BatchOrder:
    """How a data set's examples are drawn into batches each epoch: the arguments of
    :func:`length_grouped_batches` other than the lengths and the epoch."""

    batch_size: int
    seed: int
    grouped: bool = True
    context: DistributedContext | None = None

    def batches(self, lengths: Sequence[int], epoch: int) -> list[list[int]]:
        """This rank's batches of indices into ``lengths`` for ``epoch``."""
        return length_grouped_batches(
            lengths, self.batch_size, self.seed, epoch, self.grouped, self.context
        )


def pad_batch(
    sequences: Sequence[Sequence[int]], pad_id: int, multiple_of: int = 1
) -> dict[str, torch.Tensor]:
    """Pad token-id lists to the longest in the batch (dynamic padding)."""
    longest = max(len(ids) for ids in sequences)
    longest = math.ceil(longest / multiple_of) * multiple_of
    input_ids = torch.full((len(sequences), longest), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(sequences), longest), dtype=torch.long)
    for row, ids in enumerate(sequences):
        input_ids[row, : len(ids)] = torch.as_tensor(ids, dtype=torch.long)
        attention_mask[row, : len(ids)] = 1
    return {"input_ids": input_ids, "attention_mask": attention_mask}


def move_to(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    return {key: value.to(device, non_blocking=True) for key, value in batch.items()}


def micro_batches(
    source: BatchSource, epoch: int, position: int
) -> Iterator[tuple[int, int, list[int]]]:
    """Endless (epoch, position, indices) stream starting at a saved data position (the
    ``position``-th batch of ``epoch``)."""
    while True:
        batches = source.epoch_batches(epoch)
        if not batches:
            raise TrainingError("the training data yields no batch (too few examples?)")
        while position < len(batches):
            yield epoch, position, batches[position]
            position += 1
        epoch, position = epoch + 1, 0
