"""Learning signals and robustness of classifier fine-tuning on the tiny BERT."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from components.config import RatchetConfig, load_config
from components.errors import ConfigError
from components.finetune import run_finetuning
from components.finetune_run import encode_texts, evaluate_accuracy
from components.model_surgery import layerwise_lr_scales
from components.training.optimization import build_optimizer
from tests.conftest import PROJECT_ROOT
from tests.model.train_worker import LABELS, sentiment_data

WORKER = Path(__file__).with_name("train_worker.py")
DETERMINISTIC = [
    "train.max_steps=12",
    "train.checkpoint_every_steps=4",
    "train.checkpoint_every_minutes=null",  # step-exact checkpoints on a slow machine too
    "train.eval_every_steps=100",  # evaluate only at the end: final = last-step weights
    "train.deterministic=true",
]


def tiny_settings(tiny_bert_dir: Path, *overrides: str) -> RatchetConfig:
    return load_config(
        PROJECT_ROOT / "params.yaml",
        [PROJECT_ROOT / "configs" / "smoke.yaml"],
        [f"model.base={tiny_bert_dir}", *overrides],
    )


@pytest.mark.slow
def test_fits_a_separable_data_set(tiny_bert_dir: Path, tmp_path: Path) -> None:
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    config = tiny_settings(
        tiny_bert_dir,
        "train.lr=3e-3",
        "train.epochs=6",
        "train.max_steps=null",
        "train.eval_every_steps=16",
        "train.grad_accum_steps=1",
    )
    data = sentiment_data(128)
    steps: list[dict[str, float]] = []
    result = run_finetuning(
        config,
        data,
        str(tiny_bert_dir),
        tmp_path / "model",
        tmp_path / "checkpoints",
        lambda step, metrics: steps.append(metrics),
    )
    model = AutoModelForSequenceClassification.from_pretrained(result.model_dir)
    tokenizer = AutoTokenizer.from_pretrained(result.model_dir)
    train_ids = encode_texts(tokenizer, data.train["text"].tolist(), 32)
    scores = evaluate_accuracy(model, train_ids, data.train["label"].tolist(), 64, 0)
    assert scores["val_accuracy"] >= 0.95  # here: accuracy on the training rows
    assert result.metrics["val_accuracy"] >= 0.9
    assert model.config.id2label == dict(enumerate(LABELS))
    assert (result.model_dir / "model.safetensors").is_file()
    # Loaders take the token window from the saved tokenizer: the trained one (smoke: 32).
    assert tokenizer.model_max_length == config.model.max_length == 32
    assert {"loss", "lr", "grad_norm", "samples_per_second"} <= set(steps[0])
    assert "val_accuracy" in steps[15]
    assert steps[-1]["loss"] < steps[0]["loss"]
    assert not list((tmp_path / "checkpoints").glob("step-*"))  # finished runs clean up
    # The reported scores are the best evaluation's, which the saved weights reproduce.
    assert result.metrics["val_accuracy"] == result.metrics["best_val_accuracy"]
    val_ids = encode_texts(tokenizer, data.validation["text"].tolist(), 32)
    rescored = evaluate_accuracy(model, val_ids, data.validation["label"].tolist(), 64, 0)
    assert rescored["val_accuracy"] == pytest.approx(result.metrics["val_accuracy"])


def test_frozen_layers_keep_their_weights(tiny_bert_dir: Path, tmp_path: Path) -> None:
    from transformers import AutoModelForSequenceClassification

    config = tiny_settings(tiny_bert_dir, "train.max_steps=6", "train.freeze_layers=1")
    result = run_finetuning(config, sentiment_data(64), str(tiny_bert_dir), tmp_path / "model")
    before = load_file(tiny_bert_dir / "model.safetensors")
    after = load_file(result.model_dir / "model.safetensors")

    def weight(tensors: dict[str, torch.Tensor], suffix: str) -> torch.Tensor:
        return next(value for key, value in tensors.items() if key.endswith(suffix))

    for frozen in (
        "embeddings.word_embeddings.weight",
        "encoder.layer.0.attention.self.query.weight",
        "encoder.layer.0.output.dense.weight",
    ):
        assert torch.equal(weight(before, frozen), weight(after, frozen)), frozen
    trained = "encoder.layer.1.attention.self.query.weight"
    assert not torch.equal(weight(before, trained), weight(after, trained))
    model = AutoModelForSequenceClassification.from_pretrained(result.model_dir)
    layers = model.config.num_hidden_layers
    too_many = tiny_settings(tiny_bert_dir, f"train.freeze_layers={layers}")
    with pytest.raises(ConfigError, match=f"freeze_layers is {layers}, but the model has only"):
        run_finetuning(too_many, sentiment_data(64), str(tiny_bert_dir), tmp_path / "other")


def test_layerwise_lr_decay_sets_a_rate_per_depth(tiny_bert_dir: Path) -> None:
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(tiny_bert_dir, num_labels=2)
    top = model.config.num_hidden_layers  # the head sits above the last of these blocks
    scales = layerwise_lr_scales(model, 0.5)
    assert scales["classifier.weight"] == scales["bert.pooler.dense.weight"] == 1.0
    assert scales[f"bert.encoder.layer.{top - 1}.output.dense.weight"] == 0.5
    assert scales["bert.encoder.layer.0.attention.self.query.bias"] == 0.5**top
    assert scales["bert.embeddings.word_embeddings.weight"] == 0.5 ** (top + 1)
    assert scales["bert.embeddings.LayerNorm.weight"] == 0.5 ** (top + 1)

    optimizer = build_optimizer(model, 1e-3, 0.01, torch.device("cpu"), scales)
    names = {id(parameter): name for name, parameter in model.named_parameters()}
    grouped = [names[id(p)] for group in optimizer.param_groups for p in group["params"]]
    assert sorted(grouped) == sorted(names.values())  # every weight, once
    for group in optimizer.param_groups:
        for parameter in group["params"]:
            name = names[id(parameter)]
            assert group["lr"] == pytest.approx(1e-3 * scales[name]), name
            assert group["weight_decay"] == (0.0 if parameter.ndim < 2 else 0.01), name
    assert optimizer.param_groups[0]["lr"] == 1e-3  # the logged rate is the head's
    plain = build_optimizer(model, 1e-3, 0.01, torch.device("cpu"))
    assert [(g["lr"], g["weight_decay"]) for g in plain.param_groups] == [(1e-3, 0.01), (1e-3, 0.0)]
    # Same two groups without weight decay, so saved optimiser states keep their layout.
    assert len(build_optimizer(model, 1e-3, 0.0, torch.device("cpu")).param_groups) == 2


def test_keep_last_saves_and_reports_the_final_steps_weights(
    tiny_bert_dir: Path, tmp_path: Path
) -> None:
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    config = tiny_settings(
        tiny_bert_dir,
        "train.max_steps=8",
        "train.eval_every_steps=2",
        "train.early_stopping_patience=null",
        "train.keep=last",
        "train.precision=fp32",  # the rescore below runs in fp32
    )
    data = sentiment_data(128)
    evaluations: list[dict[str, float]] = []
    result = run_finetuning(
        config,
        data,
        str(tiny_bert_dir),
        tmp_path / "model",
        on_metrics=lambda step, metrics: evaluations.extend(
            [{**metrics, "step": step}] if "val_loss" in metrics else []
        ),
    )
    assert [e["step"] for e in evaluations] == [2, 4, 6, 8]
    # Validation loss moves at every step, so the last evaluation's differs from the
    # best-accuracy one's (ties keep the earliest), which "best" would have saved.
    best = next(e for e in evaluations if e["step"] == result.metrics["best_step"])
    assert best["step"] < 8
    assert evaluations[-1]["val_loss"] != pytest.approx(best["val_loss"])
    assert result.metrics["val_loss"] == evaluations[-1]["val_loss"]
    assert result.metrics["val_accuracy"] == evaluations[-1]["val_accuracy"]
    model = AutoModelForSequenceClassification.from_pretrained(result.model_dir)
    tokenizer = AutoTokenizer.from_pretrained(result.model_dir)
    val_ids = encode_texts(tokenizer, data.validation["text"].tolist(), 32)
    rescored = evaluate_accuracy(model, val_ids, data.validation["label"].tolist(), 64, 0)
    assert rescored["val_loss"] == pytest.approx(evaluations[-1]["val_loss"], rel=1e-5)


def test_layerwise_lr_decay_slows_the_lower_layers(tiny_bert_dir: Path, tmp_path: Path) -> None:
    before = load_file(tiny_bert_dir / "model.safetensors")

    def changes(decay: float) -> list[float]:
        """Mean absolute change of each block's query weights after a short fine-tune."""
        config = tiny_settings(tiny_bert_dir, "train.max_steps=4", f"train.layer_lr_decay={decay}")
        out = tmp_path / f"decay-{decay}"
        after = load_file(
            run_finetuning(config, sentiment_data(64), str(tiny_bert_dir), out).model_dir
            / "model.safetensors"
        )
        moved = []
        for layer in (0, 1):
            suffix = f"encoder.layer.{layer}.attention.self.query.weight"
            key = next(k for k in before if k.endswith(suffix))
            moved.append(float((after[key] - before[key]).abs().mean()))
        return moved

    # Adam steps are about lr in size, so the lowest block of two moves ~decay times as far.
    low, high = changes(0.01)
    assert low < 0.05 * high
    low, high = changes(1.0)
    assert low > 0.2 * high


def test_mean_pooling_head_fits_and_reloads_through_the_auto_classes(
    tiny_bert_dir: Path, tmp_path: Path
) -> None:
    from components.evaluate import TextClassifier

    config = tiny_settings(
        tiny_bert_dir,
        "model.pooling=mean",
        "train.lr=3e-3",
        "train.epochs=6",
        "train.max_steps=null",
        "train.eval_every_steps=16",
    )
    data = sentiment_data(128)
    result = run_finetuning(config, data, str(tiny_bert_dir), tmp_path / "model")
    assert result.metrics["val_accuracy"] >= 0.9
    loaded = TextClassifier.load(result.model_dir)  # as evaluation and the MLflow model do
    model = loaded.model
    assert type(model).__name__ == "MeanPoolingBertForSequenceClassification"
    assert not any("pooler" in name for name in model.state_dict())
    batch = loaded.tokenizer(["a good film", "bad"], padding=True, return_tensors="pt")
    with torch.no_grad():
        logits = model(**batch).logits
        hidden = model.bert(**batch).last_hidden_state
    # The head is the classifier over the mean of the non-padding token states.
    mask = batch["attention_mask"].unsqueeze(-1).float()
    expected = model.classifier((hidden * mask).sum(1) / mask.sum(1))
    assert torch.allclose(logits, expected, atol=1e-5)
    assert loaded.labels == LABELS


def test_time_based_checkpoints_are_written_on_the_wall_clock(
    tiny_bert_dir: Path, tmp_path: Path
) -> None:
    # An interval shorter than any step: a checkpoint after every step but the last.
    config = tiny_settings(
        tiny_bert_dir,
        "train.epochs=10",
        "train.max_steps=5",
        "train.checkpoint_every_steps=null",
        "train.checkpoint_every_minutes=1e-9",
    )
    data = sentiment_data(64)
    timed = run_finetuning(config, data, str(tiny_bert_dir), tmp_path / "m", tmp_path / "ckpt")
    assert (timed.metrics["steps"], timed.metrics["checkpoints_written"]) == (5, 4)
    never = config.model_copy(
        update={"train": config.train.model_copy(update={"checkpoint_every_minutes": None})}
    )
    none = run_finetuning(never, data, str(tiny_bert_dir), tmp_path / "n", tmp_path / "ckpt2")
    assert none.metrics["checkpoints_written"] == 0


def start_worker(
    tiny_bert_dir: Path, out: Path, checkpoints: Path, *extra: str
) -> subprocess.Popen[bytes]:
    command = [sys.executable, str(WORKER), str(tiny_bert_dir), str(out), str(checkpoints)]
    for override in DETERMINISTIC:
        command += ["--set", override]
    env = {**os.environ, "RATCHET_NO_PROGRESS": "1"}
    return subprocess.Popen([*command, *extra], env=env, cwd=PROJECT_ROOT)


@pytest.mark.slow
@pytest.mark.parametrize(
    "evaluation",
    [
        [],  # evaluated at the end only: the final weights are the last step's
        # Evaluated at steps 3, 6, 9, 12 and the best kept: the best weights so far must
        # travel in the checkpoint at step 8 for the resumed run to end on the same ones.
        ["--set", "train.eval_every_steps=3", "--set", "train.early_stopping_patience=null"],
    ],
    ids=["last-step", "best-of-four-evaluations"],
)
def test_kill_and_resume_matches_an_uninterrupted_run(
    tiny_bert_dir: Path, tmp_path: Path, evaluation: list[str]
) -> None:
    checkpoints = tmp_path / "checkpoints"
    straight_run = start_worker(
        tiny_bert_dir, tmp_path / "straight", tmp_path / "other", *evaluation
    )
    killed = start_worker(
        tiny_bert_dir, tmp_path / "resumed", checkpoints, "--kill-at", "10", *evaluation
    )
    assert killed.wait(timeout=300) == -9  # SIGKILL after step 10, checkpoint at 8
    assert sorted(p.name for p in checkpoints.glob("step-*")) == ["step-00000004", "step-00000008"]
    assert not (tmp_path / "resumed" / "model").exists()
    resumed_run = start_worker(tiny_bert_dir, tmp_path / "resumed", checkpoints, *evaluation)
    assert resumed_run.wait(timeout=300) == 0
    assert straight_run.wait(timeout=300) == 0
    resumed = load_file(tmp_path / "resumed" / "model" / "model.safetensors")
    straight = load_file(tmp_path / "straight" / "model" / "model.safetensors")
    initial = load_file(tiny_bert_dir / "model.safetensors")
    assert resumed.keys() == straight.keys()
    assert all(torch.equal(resumed[name], straight[name]) for name in resumed)
    key = "bert.encoder.layer.0.attention.self.query.weight"
    assert not torch.equal(resumed[key], initial[key])  # it did train


@pytest.mark.slow
@pytest.mark.parametrize(
    "soup", [[], ["--set", "train.soup_seeds=[7]"]], ids=["one-run", "soup-of-two"]
)
def test_two_process_gloo_ddp_ends_with_identical_weights(
    tiny_bert_dir: Path, tmp_path: Path, soup: list[str]
) -> None:
    torchrun = Path(sys.executable).with_name("torchrun")
    command = [
        str(torchrun),
        "--nproc_per_node",
        "2",
        "--master_port",
        "29518" if soup else "29517",
        str(WORKER),
        str(tiny_bert_dir),
        str(tmp_path),
        str(tmp_path / "checkpoints"),
        "--set",
        "train.max_steps=6",
        "--set",
        "train.eval_every_steps=3",
        # Time-based checkpoints after every step: rank 0's clock decides for both ranks.
        "--set",
        "train.checkpoint_every_minutes=1e-9",
        *soup,
    ]
    env = {**os.environ, "RATCHET_NO_PROGRESS": "1", "OMP_NUM_THREADS": "1"}
    subprocess.run(command, env=env, cwd=PROJECT_ROOT, check=True, timeout=300)
    rank0 = torch.load(tmp_path / "weights-rank0.pt")
    rank1 = torch.load(tmp_path / "weights-rank1.pt")
    assert all(torch.equal(rank0[name], rank1[name]) for name in rank0)
    config = json.loads((tmp_path / "model" / "config.json").read_text())
    assert config["id2label"] == {"0": "negative", "1": "positive"}
    # Every rank reports the saved model's scores (a soup's are rank 0's, shared).
    reported = [json.loads((tmp_path / f"metrics-rank{r}.json").read_text()) for r in (0, 1)]
    assert reported[0]["val_accuracy"] == reported[1]["val_accuracy"]
    assert reported[0].get("soup_members") == (2 if soup else None)
