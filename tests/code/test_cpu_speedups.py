"""The CPU shortcuts of the training step keep its maths: packed-mask dropout is dropout at
rate p, and the sparse embedding gradient gives the optimiser the same update as the
dense one, clipping included."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from torch import nn
from transformers import AutoTokenizer, BertForMaskedLM

from components.kernels.cpu_speedups import (
    PackedMaskDropout,
    SparseEmbeddingGradient,
    apply_cpu_speedups,
    swap_dropouts,
)
from components.modeling import classifier_from_pretrained
from components.training.loop import LoopSettings, run_loop
from components.training.optimization import build_optimizer
from tests.conftest import prepared_split


@pytest.mark.parametrize("p", [0.1, 0.25, 0.5])
def test_packed_mask_dropout_drops_at_rate_p_and_keeps_the_mean(p: float) -> None:
    torch.manual_seed(0)
    dropout = PackedMaskDropout(p).train()
    out = dropout(torch.ones(400_000))
    dropped = (out == 0).float().mean().item()
    assert dropped == pytest.approx(p, abs=0.004)
    assert out.mean().item() == pytest.approx(1.0, abs=0.006)
    assert torch.allclose(out[out != 0], torch.tensor(1 / (1 - p)), rtol=1e-4)
    # Each of the four 16-bit slices of a random word drops at rate p (a biased top slice
    # would drop at a different rate).
    for lane in range(4):
        assert (out[lane::4] == 0).float().mean().item() == pytest.approx(p, abs=0.008)


def test_packed_mask_dropout_backward_uses_the_forward_mask_and_is_seeded() -> None:
    inputs = torch.randn(8, 16, 32).abs().add(0.1).requires_grad_()
    torch.manual_seed(3)
    out = PackedMaskDropout(0.1).train()(inputs)
    out.sum().backward()
    assert inputs.grad is not None
    kept = out != 0
    assert 0 < kept.float().mean().item() < 1
    assert torch.allclose(inputs.grad, kept.float() * (65536 / (65536 - 6554)))
    torch.manual_seed(3)
    assert torch.equal(PackedMaskDropout(0.1).train()(inputs), out)


def test_packed_mask_dropout_edges() -> None:
    inputs = torch.randn(64, 32)
    assert torch.equal(PackedMaskDropout(0.1).eval()(inputs), inputs)
    assert torch.equal(PackedMaskDropout(0.0).train()(inputs), inputs)
    assert torch.count_nonzero(PackedMaskDropout(1.0).train()(inputs)) == 0
    half = PackedMaskDropout(0.1).train()(inputs.to(torch.bfloat16))
    assert half.dtype == torch.bfloat16


def tiny_classifier(tiny_bert_dir: Path, dropout: float = 0.1) -> nn.Module:
    torch.manual_seed(0)
    return classifier_from_pretrained(
        str(tiny_bert_dir),
        "cls",
        num_labels=2,
        id2label={0: "negative", 1: "positive"},
        label2id={"negative": 0, "positive": 1},
        hidden_dropout_prob=dropout,
        attention_probs_dropout_prob=dropout,
    )


def test_in_place_or_hooked_dropouts_are_left_alone() -> None:
    model = nn.Sequential(nn.Dropout(0.1, inplace=True), nn.Dropout(0.1), nn.Dropout(0.1))
    model[2].register_forward_hook(lambda module, args, output: None)
    swap_dropouts(model)
    assert [type(m) for m in model] == [nn.Dropout, PackedMaskDropout, nn.Dropout]


def test_dropouts_are_swapped_and_put_back(tiny_bert_dir: Path) -> None:
    model = tiny_classifier(tiny_bert_dir)
    originals = [m for m in model.modules() if type(m) is nn.Dropout]
    assert originals
    restore = swap_dropouts(model)
    assert not any(type(m) is nn.Dropout for m in model.modules())
    packed = [m for m in model.modules() if isinstance(m, PackedMaskDropout)]
    assert [m.p for m in packed] == [m.p for m in originals]
    restore()
    assert [m for m in model.modules() if type(m) is nn.Dropout] == originals
    assert not any(isinstance(m, PackedMaskDropout) for m in model.modules())


def test_only_a_trained_word_embedding_gets_a_sparse_gradient(tiny_bert_dir: Path) -> None:
    model = tiny_classifier(tiny_bert_dir)
    helper = SparseEmbeddingGradient.for_model(model)
    assert helper is not None and helper.embedding is model.bert.embeddings.word_embeddings
    helper.detach()
    assert not model.bert.embeddings.word_embeddings.sparse
    model.bert.embeddings.word_embeddings.weight.requires_grad_(False)
    assert SparseEmbeddingGradient.for_model(model) is None


def test_a_table_tied_to_the_mlm_decoder_gets_the_dense_gradient_it_had(
    tiny_bert_dir: Path,
) -> None:
    """The decoder's dense gradient and the lookup's sparse one add up to the same sum."""
    torch.manual_seed(0)
    dense_model = BertForMaskedLM.from_pretrained(tiny_bert_dir).eval()
    sparse_model = copy.deepcopy(dense_model)
    helper = SparseEmbeddingGradient.for_model(sparse_model)
    assert helper is not None and sparse_model.bert.embeddings.word_embeddings.sparse
    batch = token_batches(tiny_bert_dir, 1)[0]
    batch["labels"] = batch["input_ids"].clone()
    norms = []
    for model in (dense_model, sparse_model):
        model(**batch).loss.backward()
    dense_weight = dense_model.bert.embeddings.word_embeddings.weight
    sparse_weight = sparse_model.bert.embeddings.word_embeddings.weight
    assert sparse_weight.grad is not None and not sparse_weight.grad.is_sparse
    assert torch.allclose(sparse_weight.grad, dense_weight.grad, atol=1e-7, rtol=1e-5)
    norms.append(float(torch.nn.utils.clip_grad_norm_(dense_model.parameters(), 0.1)))
    norms.append(helper.clip_and_densify(sparse_model, 0.1))
    assert norms[1] == pytest.approx(norms[0], rel=1e-5)
    assert torch.allclose(sparse_weight.grad, dense_weight.grad, atol=1e-8, rtol=1e-5)


def token_batches(tiny_bert_dir: Path, count: int) -> list[dict[str, torch.Tensor]]:
    """Batches of 8 distinct sentences each, so each step touches other embedding rows."""
    tokenizer = AutoTokenizer.from_pretrained(str(tiny_bert_dir))
    rows = prepared_split(8 * count, seed=5)
    batches = []
    for start in range(0, 8 * count, 8):
        chunk = rows.iloc[start : start + 8]
        batch = dict(tokenizer(list(chunk["text"]), padding=True, return_tensors="pt"))
        batch["labels"] = torch.tensor(chunk["label"].to_numpy())
        batches.append(batch)
    return batches


@pytest.mark.parametrize("max_norm", [100.0, 0.05])  # not clipping, clipping
def test_sparse_embedding_gradient_gives_the_dense_update(
    tiny_bert_dir: Path, max_norm: float
) -> None:
    dense_model = tiny_classifier(tiny_bert_dir)
    sparse_model = copy.deepcopy(dense_model)
    helper = SparseEmbeddingGradient.for_model(sparse_model)
    assert helper is not None
    optimizers = [
        build_optimizer(m, 1e-2, 0.01, torch.device("cpu")) for m in (dense_model, sparse_model)
    ]
    batches = token_batches(tiny_bert_dir, 6)
    vocabulary = sparse_model.bert.embeddings.word_embeddings.num_embeddings
    # Dropout off (eval mode) so both models see the same forward; gradients still flow.
    dense_model.eval()
    sparse_model.eval()
    for step in range(3):
        micro = batches[2 * step : 2 * step + 2]  # two micro-batches accumulate
        for batch in micro:
            dense_model(**batch).loss.backward()
            sparse_model(**batch).loss.backward()
        assert sparse_model.bert.embeddings.word_embeddings.weight.grad.is_sparse
        dense_norm = float(torch.nn.utils.clip_grad_norm_(dense_model.parameters(), max_norm))
        sparse_norm = helper.clip_and_densify(sparse_model, max_norm)
        assert sparse_norm == pytest.approx(dense_norm, rel=1e-5)
        assert helper.rows is not None and 0 < len(helper.rows) < vocabulary
        for (name, dense), sparse in zip(
            dense_model.named_parameters(), sparse_model.parameters(), strict=True
        ):
            assert torch.allclose(sparse.grad, dense.grad, atol=1e-7, rtol=1e-5), name
        for optimizer in optimizers:
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        helper.clear()
        assert torch.count_nonzero(helper.dense) == 0
        for (name, dense), sparse in zip(
            dense_model.named_parameters(), sparse_model.parameters(), strict=True
        ):
            # Adam turns float noise in near-zero gradients (attention key biases) into
            # 1e-6-sized differences; real differences (a stale row) are lr-sized, 1e-2.
            assert torch.allclose(sparse, dense, atol=1e-5, rtol=1e-4), (step, name)
    if max_norm < 1:
        assert dense_norm > max_norm  # the clipping case really clipped


class TokenBatches:
    def __init__(self, batches: list[dict[str, torch.Tensor]]) -> None:
        self.batches = batches

    def epoch_batches(self, epoch: int) -> list[list[int]]:
        return [[i] for i in range(len(self.batches))]

    def collate(self, indices: list[int], step: int) -> dict[str, torch.Tensor]:
        return self.batches[indices[0]]


def test_the_loop_with_speedups_ends_where_it_ends_without_and_undoes_them(
    tiny_bert_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = {"densify": 0, "dropout": 0}
    densify, dropout_forward = (
        SparseEmbeddingGradient.clip_and_densify,
        PackedMaskDropout.forward,
    )

    def counted_densify(self: SparseEmbeddingGradient, *args: object) -> float:
        calls["densify"] += 1
        return densify(self, *args)  # type: ignore[arg-type]

    def counted_dropout(self: PackedMaskDropout, inputs: torch.Tensor) -> torch.Tensor:
        calls["dropout"] += 1
        return dropout_forward(self, inputs)

    monkeypatch.setattr(SparseEmbeddingGradient, "clip_and_densify", counted_densify)
    monkeypatch.setattr(PackedMaskDropout, "forward", counted_dropout)
    batches = TokenBatches(token_batches(tiny_bert_dir, 4))
    finals = {}
    for enabled in (False, True):
        # Dropout probability 0, so the two runs draw no different random numbers.
        model = tiny_classifier(tiny_bert_dir, dropout=0.0)
        settings = LoopSettings(
            total_steps=4,
            lr=1e-2,
            weight_decay=0.01,
            warmup_fraction=0.0,
            max_grad_norm=0.5,
            checkpoint_every_minutes=None,
            cpu_speedups=enabled,
            precision="fp32",  # the maths under test; auto times bf16 on an AMX CPU, per run
        )
        outcome = run_loop(model, batches, settings)
        finals[enabled] = (model.state_dict(), outcome.state.loss_sum)
        assert not model.bert.embeddings.word_embeddings.sparse
        assert model.bert.embeddings.word_embeddings.weight.grad is None
        assert not any(isinstance(m, PackedMaskDropout) for m in model.modules())
        if not enabled:
            assert calls == {"densify": 0, "dropout": 0}
    # The shortcuts ran: every step clipped through the helper, every dropout was swapped.
    assert calls["densify"] == 4 and calls["dropout"] > 0
    assert finals[True][1] == pytest.approx(finals[False][1], rel=1e-5)
    for name, value in finals[False][0].items():
        assert torch.allclose(finals[True][0][name], value, atol=1e-5, rtol=1e-4), name


def test_undo_after_an_interrupted_step_leaves_no_sparse_gradient(tiny_bert_dir: Path) -> None:
    model = tiny_classifier(tiny_bert_dir)
    applied = apply_cpu_speedups(model)
    batch = token_batches(tiny_bert_dir, 1)[0]
    model(**batch).loss.backward()  # a step that never reaches the optimiser
    weight = model.bert.embeddings.word_embeddings.weight
    assert weight.grad is not None and weight.grad.is_sparse
    applied.undo()
    assert weight.grad is None
    model(**batch).loss.backward()
    assert weight.grad is not None and not weight.grad.is_sparse


def test_apply_under_ddp_leaves_the_embedding_dense(tiny_bert_dir: Path) -> None:
    model = tiny_classifier(tiny_bert_dir)
    applied = apply_cpu_speedups(model, sparse_embedding=False)
    assert applied.embedding_gradient is None
    assert not model.bert.embeddings.word_embeddings.sparse
    assert any(isinstance(m, PackedMaskDropout) for m in model.modules())
    applied.undo()
    assert not any(isinstance(m, PackedMaskDropout) for m in model.modules())
