"""Cutting the last encoder layer to the [CLS] position keeps a CLS classifier's maths:
the same logits, loss and gradients, and the same fine-tuned weights."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from torch import nn
from transformers import (
    AutoConfig,
    BertConfig,
    BertForMaskedLM,
    BertForSequenceClassification,
    BertForTokenClassification,
    RobertaConfig,
    RobertaForSequenceClassification,
)

from components.finetune import run_finetuning
from components.kernels.first_position import (
    FirstPositionLayer,
    cut_last_layer,
    last_layer_at_first_position,
)
from components.modeling import MeanPoolingBertConfig, MeanPoolingBertForSequenceClassification
from tests.model.test_finetune import tiny_settings
from tests.model.train_worker import sentiment_data

SIZES = dict(
    vocab_size=120,
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=4,
    intermediate_size=64,
    max_position_embeddings=40,
    hidden_dropout_prob=0.0,
    attention_probs_dropout_prob=0.0,
)


def tiny_model(kind: str, attention: str = "sdpa") -> nn.Module:
    torch.manual_seed(0)
    if kind == "roberta":
        config = RobertaConfig(**SIZES, pad_token_id=1, attn_implementation=attention)
        return RobertaForSequenceClassification(config).train()
    config = BertConfig(**SIZES, num_labels=3, attn_implementation=attention)
    return BertForSequenceClassification(config).train()


def padded_batch() -> dict[str, torch.Tensor]:
    torch.manual_seed(1)
    mask = torch.tensor([[1] * 9, [1] * 6 + [0] * 3, [1] * 2 + [0] * 7, [1] * 8 + [0]])
    return {
        "input_ids": torch.randint(3, 120, (4, 9)) * mask + (1 - mask),
        "attention_mask": mask,
        "labels": torch.tensor([0, 1, 1, 0]),
    }


def loss_logits_gradients(model: nn.Module) -> tuple[torch.Tensor, torch.Tensor, dict]:
    model.zero_grad(set_to_none=True)
    output = model(**padded_batch())
    output.loss.backward()
    gradients = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    return output.loss.detach(), output.logits.detach(), gradients


@pytest.mark.parametrize(
    ("kind", "attention"), [("bert", "sdpa"), ("bert", "eager"), ("roberta", "sdpa")]
)
def test_the_cut_layer_gives_the_whole_layers_loss_logits_and_gradients(
    kind: str, attention: str
) -> None:
    model = tiny_model(kind, attention)
    whole_layer = model.base_model.encoder.layer[-1]
    names = list(model.state_dict())
    loss, logits, gradients = loss_logits_gradients(model)
    positions: list[int] = []
    whole_layer.intermediate.register_forward_hook(
        lambda module, inputs, output: positions.append(inputs[0].shape[1])
    )
    with last_layer_at_first_position(model) as cut:
        assert cut
        assert isinstance(model.base_model.encoder.layer[-1], FirstPositionLayer)
        assert list(model.state_dict()) == names  # checkpoints and the optimiser see no change
        cut_loss, cut_logits, cut_gradients = loss_logits_gradients(model)
    assert positions == [1]  # the last feed-forward block ran at one position
    assert model.base_model.encoder.layer[-1] is whole_layer
    torch.testing.assert_close(cut_logits, logits, rtol=0, atol=1e-6)
    torch.testing.assert_close(cut_loss, loss, rtol=0, atol=1e-6)
    assert cut_gradients.keys() == gradients.keys()
    for name, gradient in gradients.items():
        torch.testing.assert_close(cut_gradients[name], gradient, rtol=1e-4, atol=1e-7)


def test_heads_that_read_other_positions_keep_the_whole_layer() -> None:
    bert = BertConfig(**SIZES)
    mean_pooling = MeanPoolingBertConfig(**SIZES)
    for model in (
        BertForMaskedLM(bert),
        BertForTokenClassification(bert),
        MeanPoolingBertForSequenceClassification(mean_pooling),
    ):
        layers = list(model.base_model.encoder.layer)
        assert cut_last_layer(model) is None
        with last_layer_at_first_position(model) as cut:
            assert not cut
        assert list(model.base_model.encoder.layer) == layers
    eager_only = BertConfig(**SIZES, attn_implementation="flex_attention")
    assert cut_last_layer(BertForSequenceClassification(eager_only)) is None


def test_the_whole_layer_is_back_after_an_error_and_when_disabled() -> None:
    model = tiny_model("bert")
    whole_layer = model.base_model.encoder.layer[-1]
    with pytest.raises(RuntimeError, match="stop"), last_layer_at_first_position(model):
        raise RuntimeError("stop")
    assert model.base_model.encoder.layer[-1] is whole_layer
    with last_layer_at_first_position(model, enabled=False) as cut:
        assert not cut
        assert model.base_model.encoder.layer[-1] is whole_layer


def test_fine_tuning_with_the_cut_ends_with_the_whole_layers_weights(
    tiny_bert_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Without dropout the two runs draw the same random numbers, so only the cut differs.
    base = tmp_path / "base"
    shutil.copytree(tiny_bert_dir, base)
    config = AutoConfig.from_pretrained(base)
    config.hidden_dropout_prob = config.attention_probs_dropout_prob = 0.0
    config.save_pretrained(base)
    calls = {"cut": 0}
    cut_forward = FirstPositionLayer.forward

    def counted(self: FirstPositionLayer, *args: object, **kwargs: object) -> torch.Tensor:
        calls["cut"] += 1
        return cut_forward(self, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(FirstPositionLayer, "forward", counted)
    data = sentiment_data(64)
    weights = {}
    for enabled in (False, True):
        settings = tiny_settings(
            base,
            "train.max_steps=6",
            "train.lr=3e-3",
            "train.precision=fp32",  # the maths, not bf16 rounding: an AMX CPU picks bf16
            f"train.last_layer_cls_only={enabled}",
        )
        result = run_finetuning(settings, data, str(base), tmp_path / f"model-{enabled}")
        weights[enabled] = load_file(result.model_dir / "model.safetensors")
        if not enabled:
            assert calls["cut"] == 0
    assert calls["cut"] >= 6  # every training step (and the evaluations) used the cut layer
    assert weights[True].keys() == weights[False].keys()
    key = "bert.encoder.layer.1.output.dense.weight"
    assert not torch.equal(weights[True][key], load_file(base / "model.safetensors")[key])
    for name, value in weights[False].items():
        torch.testing.assert_close(weights[True][name], value, rtol=1e-4, atol=1e-5)


def test_the_cut_layer_drops_attention_in_training_only() -> None:
    torch.manual_seed(0)
    config = BertConfig(**{**SIZES, "num_hidden_layers": 1, "attention_probs_dropout_prob": 0.5})
    model = BertForSequenceClassification(config)
    batch = padded_batch()
    batch.pop("labels")
    whole = model.eval()(**batch).logits
    with last_layer_at_first_position(model):
        torch.testing.assert_close(model(**batch).logits, whole, rtol=0, atol=1e-6)
        model.train()
        torch.manual_seed(5)
        dropped = model(**batch).logits
        torch.manual_seed(6)
        assert not torch.allclose(model(**batch).logits, dropped)  # the only layer drops
        torch.manual_seed(5)
        torch.testing.assert_close(model(**batch).logits, dropped, rtol=0, atol=0)
