"""Two CPU shortcuts in the training step that leave its maths as it was.

On the 2-core development machine two things cost far more than their arithmetic in a
MiniLM fine-tuning step (``benchmarks/train_throughput.py`` measures them):

* PyTorch's CPU dropout draws one random number per element (``bernoulli_``), about 7%
  of the step. ``PackedMaskDropout`` is the same inverted dropout with its keep-decisions
  taken from 16-bit slices of full-range 64-bit random words, a quarter of the draws.
* The word-embedding gradient is a dense 30k-row table that is allocated (page faults
  included), zero-filled, clipped and freed every step, although a batch touches a few
  hundred rows: about 8% of a fine-tuning step. ``SparseEmbeddingGradient`` keeps it sparse
  through backward and clipping, then writes the touched rows into a persistent dense
  buffer whose other rows stay zero, so the optimiser sees the same dense gradient.
  A table tied to a masked-LM decoder also gets the decoder's dense gradient; autograd
  then adds the sparse lookup gradient into it in place, which saves a full-table
  zero-fill and addition per step (pretraining about 7% faster).

``apply_cpu_speedups`` applies both to a model for the length of a training loop, and
its result undoes them afterwards (``train.cpu_speedups: false`` turns them off).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional

# Keep-decisions are drawn as uniform int16 values; p is rounded to a multiple of 1/2**16.
_LEVELS = 1 << 16


def random_int16(count: int) -> torch.Tensor:
    """``count`` uniform int16 values from the default CPU generator, four per 64-bit draw."""
    words = torch.empty((count + 3) // 4, dtype=torch.int64)
    # from=int64 min with to=None asks for the full 64-bit range; plain random_() leaves
    # the top bit zero, which would bias every fourth slice.
    words.random_(-(2**63), None)
    return words.view(torch.int16)[:count]


class PackedMaskDropout(nn.Module):
    """Inverted dropout whose keep-mask costs a quarter of the random draws of nn.Dropout.

    Drops each element with probability round(p * 2**16) / 2**16 (p = 0.1 gives
    0.100006) and scales the kept ones to keep the expectation. Uses the default CPU
    generator, so seeding and the RNG state saved in checkpoints cover it. Other devices,
    and p outside (0, 1), use ``functional.dropout``.
    """

    def __init__(self, p: float) -> None:
        super().__init__()
        # Attention modules read .p and hand it to scaled_dot_product_attention.
        self.p = p
        self.dropped_levels = round(p * _LEVELS)
        self.threshold = self.dropped_levels - _LEVELS // 2
        self.scale = _LEVELS / max(_LEVELS - self.dropped_levels, 1)

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        if not self.training or self.dropped_levels == 0:
            return inputs
        if inputs.device.type != "cpu" or self.dropped_levels >= _LEVELS:
            return functional.dropout(inputs, self.p, training=True)
        keep = random_int16(inputs.numel()).view(inputs.shape) >= self.threshold
        if inputs.dtype == torch.float32:
            return inputs * (keep.to(inputs.dtype) * self.scale)
        # A bf16 mask would round the scale (1.111 to 1.109); scaling the product keeps it.
        return inputs * keep.to(inputs.dtype) * self.scale

    def extra_repr(self) -> str:
        return f"p={self.p}"


def swap_dropouts(model: nn.Module) -> Callable[[], None]:
    """Replace every plain ``nn.Dropout`` in ``model`` by a ``PackedMaskDropout``
    (in-place ones and ones carrying hooks are left alone).

    Returns:
        A function that puts the original modules back.
    """
    swapped: list[tuple[nn.Module, str, nn.Module]] = []
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            hooked = child._forward_hooks or child._forward_pre_hooks
            if type(child) is nn.Dropout and not child.inplace and not hooked:
                swapped.append((parent, name, child))
                packed = PackedMaskDropout(child.p)
                packed.train(child.training)
                setattr(parent, name, packed)

    def restore() -> None:
        for parent, name, original in swapped:
            original.train(getattr(parent, name).training)
            setattr(parent, name, original)

    return restore


class SparseEmbeddingGradient:
    """The gradient of one embedding table, sparse until the optimiser needs it dense."""

    def __init__(self, embedding: nn.Embedding) -> None:
        self.embedding = embedding
        self._dense: torch.Tensor | None = None  # allocated when a sparse gradient needs it
        self.rows: torch.Tensor | None = None
        self._was_sparse = embedding.sparse
        embedding.sparse = True

    @classmethod
    def for_model(cls, model: nn.Module) -> SparseEmbeddingGradient | None:
        """For ``model``'s input word embedding when it is trained on CPU.

        A table tied to an output layer (masked-LM heads) also gets that layer's dense
        gradient, which autograd adds the sparse one into in place: the full-table
        zero-fill and addition of a dense embedding gradient are saved there too, and the
        gradient reaches clipping dense.
        """
        embedding = input_word_embedding(model)
        if embedding is None or embedding.max_norm is not None:
            return None
        weight = embedding.weight
        if not weight.requires_grad or weight.device.type != "cpu":
            return None
        return cls(embedding)

    def clip_and_densify(self, model: nn.Module, max_norm: float) -> float:
        """Clip all of ``model``'s gradients to ``max_norm`` as ``clip_grad_norm_`` does,
        counting only the table's touched rows, then give the table its dense gradient.

        Returns:
            The total gradient norm before clipping.
        """
        weight = self.embedding.weight
        if weight.grad is None or not weight.grad.is_sparse:
            return float(torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm))
        sparse = weight.grad.coalesce()
        rows, values = sparse.indices()[0], sparse.values()
        others = [p for p in model.parameters() if p.grad is not None and p is not weight]
        gradients = [p.grad for p in others if p.grad is not None]
        total = torch.nn.utils.get_total_norm([*gradients, values])
        torch.nn.utils.clip_grads_with_norm_(others, max_norm, total)
        values = values * torch.clamp(max_norm / (total + 1e-6), max=1.0)
        self.dense.index_copy_(0, rows, values)
        self.rows = rows
        weight.grad = self.dense
        return float(total)

    @property
    def dense(self) -> torch.Tensor:
        """The persistent dense gradient buffer; all zero between steps."""
        if self._dense is None:
            self._dense = torch.zeros_like(self.embedding.weight)
        return self._dense

    def clear(self) -> None:
        """Zero the rows the last step wrote (call after the optimiser step)."""
        if self.rows is not None:
            self.dense.index_fill_(0, self.rows, 0.0)
            self.rows = None

    def detach(self) -> None:
        """Back to a dense-gradient table. A gradient left by an interrupted step (sparse,
        or this buffer) is dropped, so nothing stale reaches a later backward."""
        self.clear()
        grad = self.embedding.weight.grad
        if grad is not None and (grad is self._dense or grad.is_sparse):
            self.embedding.weight.grad = None
        self.embedding.sparse = self._was_sparse


def input_word_embedding(model: nn.Module) -> nn.Embedding | None:
    """The token embedding of the first Hugging Face model inside ``model``, if any."""
    for module in model.modules():
        get_input_embeddings = getattr(module, "get_input_embeddings", None)
        if callable(get_input_embeddings):
            try:
                embedding = get_input_embeddings()
            except NotImplementedError:
                continue
            return embedding if isinstance(embedding, nn.Embedding) else None
    return None


@dataclass
class AppliedSpeedups:
    """What ``apply_cpu_speedups`` changed; ``undo`` puts the model back as it was."""

    embedding_gradient: SparseEmbeddingGradient | None = None
    restore_dropouts: Callable[[], None] | None = None

    def undo(self) -> None:
        if self.embedding_gradient is not None:
            self.embedding_gradient.detach()
        if self.restore_dropouts is not None:
            self.restore_dropouts()


def apply_cpu_speedups(model: nn.Module, sparse_embedding: bool = True) -> AppliedSpeedups:
    """Apply both shortcuts to ``model`` for a training loop.

    ``sparse_embedding`` is false under DDP, whose gradient all-reduce expects dense
    gradients. The training step must clip and clear through the returned
    ``embedding_gradient`` when there is one.
    """
    restore_dropouts = swap_dropouts(model)
    embedding_gradient = SparseEmbeddingGradient.for_model(model) if sparse_embedding else None
    return AppliedSpeedups(embedding_gradient, restore_dropouts)
