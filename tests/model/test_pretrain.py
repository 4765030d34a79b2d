"""Learning signals of MLM pretraining on the tiny BERT, and the stage wrappers."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import torch

from components.config import RatchetConfig, load_config
from components.errors import ConfigError
from components.finetune import run_train_stage
from components.pretrain import run_pretrain_stage, run_pretraining
from components.state import ProjectPaths
from tests.conftest import PROJECT_ROOT, make_sentiment_rows
from tests.model.train_worker import sentiment_data


def tiny_settings(tiny_bert_dir: Path, *overrides: str) -> RatchetConfig:
    return load_config(
        PROJECT_ROOT / "params.yaml",
        [PROJECT_ROOT / "configs" / "smoke.yaml"],
        [f"model.base={tiny_bert_dir}", *overrides],
    )


@pytest.mark.slow
def test_masked_lm_loss_drops_and_output_feeds_fine_tuning(
    tiny_bert_dir: Path, tmp_path: Path
) -> None:
    from transformers import AutoModelForSequenceClassification

    config = tiny_settings(
        tiny_bert_dir, "pretrain.max_steps=20", "pretrain.batch_size=16", "pretrain.lr=3e-3"
    )
    texts = make_sentiment_rows(240, seed=3)["sentence"].tolist()
    losses: list[float] = []
    result = run_pretraining(
        config,
        texts,
        tmp_path / "pretrained",
        tmp_path / "checkpoints",
        lambda step, metrics: losses.append(metrics["loss"]),
    )
    assert result.metrics["perplexity_after"] < 0.7 * result.metrics["perplexity_before"]
    assert sum(losses[-5:]) < sum(losses[:5])
    assert (result.model_dir / "model.safetensors").is_file()
    classifier = AutoModelForSequenceClassification.from_pretrained(result.model_dir, num_labels=2)
    assert classifier.config.hidden_size == 32


def test_output_keeps_the_base_pooler_that_the_mlm_model_leaves_out(
    tiny_bert_dir: Path, tmp_path: Path
) -> None:
    from safetensors.torch import load_file
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, BertModel

    # A base saved as a bare encoder with a pooler, as sentence-transformers models are.
    base = tmp_path / "base"
    BertModel.from_pretrained(tiny_bert_dir).save_pretrained(base)
    AutoTokenizer.from_pretrained(tiny_bert_dir).save_pretrained(base)
    base_pooler = load_file(base / "model.safetensors")["pooler.dense.weight"]
    texts = make_sentiment_rows(80, seed=3)["sentence"].tolist()

    def pretrain(base_dir: Path, name: str) -> dict[str, torch.Tensor]:
        config = tiny_settings(base_dir, "pretrain.max_steps=2")
        result = run_pretraining(config, texts, tmp_path / name)
        return load_file(result.model_dir / "model.safetensors")

    saved = pretrain(base, "from-encoder")
    assert torch.equal(saved["bert.pooler.dense.weight"], base_pooler)
    # Only the missing part came from the base: the encoder is the pretrained one.
    query = "encoder.layer.0.attention.self.query.weight"
    assert not torch.equal(saved[f"bert.{query}"], load_file(base / "model.safetensors")[query])
    classifier = AutoModelForSequenceClassification.from_pretrained(
        tmp_path / "from-encoder", num_labels=2
    )
    assert torch.equal(classifier.bert.pooler.dense.weight, base_pooler)
    # A base without a pooler (saved from an MLM model) gets none made up.
    assert not [key for key in pretrain(tiny_bert_dir, "from-mlm") if "pooler" in key]


@pytest.mark.slow
def test_from_scratch_with_next_sentence_prediction(tiny_bert_dir: Path, tmp_path: Path) -> None:
    config = tiny_settings(
        tiny_bert_dir,
        "pretrain.from_scratch=true",
        "pretrain.nsp=true",
        "pretrain.scratch={hidden_size: 16, num_hidden_layers: 1, num_attention_heads: 2, "
        "intermediate_size: 32}",
        "pretrain.max_steps=12",
        "pretrain.batch_size=16",
        "pretrain.lr=5e-3",
    )
    texts = make_sentiment_rows(200, seed=4)["sentence"].tolist()
    result = run_pretraining(config, texts, tmp_path / "scratch")
    saved = json.loads((result.model_dir / "config.json").read_text())
    assert saved["hidden_size"] == 16 and saved["architectures"] == ["BertForPreTraining"]
    assert result.info["objective"] == "mlm+nsp"
    assert result.metrics["perplexity_after"] < 0.8 * result.metrics["perplexity_before"]


def test_scratch_shape_is_checked_before_compute(tiny_bert_dir: Path, tmp_path: Path) -> None:
    config = tiny_settings(
        tiny_bert_dir,
        "pretrain.from_scratch=true",
        "pretrain.scratch={hidden_size: 30, num_attention_heads: 4}",
    )
    with pytest.raises(ConfigError, match="pretrain.scratch.hidden_size"):
        run_pretraining(config, ["one text", "two texts"], tmp_path / "out")
    assert not (tmp_path / "out").exists()


def write_prepared(folder: Path) -> None:
    folder.mkdir(parents=True)
    data = sentiment_data(64)
    for name in ("train", "validation", "test"):
        pd.DataFrame(data.split(name)).to_parquet(folder / f"{name}.parquet", index=False)
    (folder / "manifest.json").write_text(json.dumps({"labels": data.labels}))


@pytest.mark.slow
def test_stages_write_the_dvc_outputs(tiny_bert_dir: Path, tmp_path: Path) -> None:
    paths = ProjectPaths(project_root=tmp_path, state_dir=tmp_path / ".ratchet")
    write_prepared(paths.prepared_dir)
    config = tiny_settings(tiny_bert_dir, "pretrain.enabled=false", "train.max_steps=4")
    pretrained = run_pretrain_stage(config, paths)
    assert pretrained.model_dir == tmp_path / "models" / "pretrained"
    assert (pretrained.model_dir / "model.safetensors").read_bytes() == (
        tiny_bert_dir / "model.safetensors"
    ).read_bytes()
    assert json.loads((tmp_path / "metrics" / "pretrain.json").read_text())["info"]
    finetuned = run_train_stage(config, paths)
    assert finetuned.info["init_model"] == str(pretrained.model_dir)
    assert (tmp_path / "models" / "finetuned" / "model.safetensors").is_file()
    metrics = json.loads((tmp_path / "metrics" / "train.json").read_text())
    assert metrics["steps"] == 4 and 0 <= metrics["val_accuracy"] <= 1


def test_pretrain_stage_finds_a_relative_base_from_another_working_directory(
    tiny_bert_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """model.base is resolved once, against the project root: the stage used to resolve
    it again inside run_pretraining against the working directory, and stopped there."""
    import shutil

    project = tmp_path / "project"
    paths = ProjectPaths(project_root=project, state_dir=project / ".ratchet")
    write_prepared(paths.prepared_dir)
    shutil.copytree(tiny_bert_dir, project / "base")
    config = tiny_settings(
        Path("base"), "pretrain.max_steps=1", "pretrain.extra_corpora=[]", "pretrain.eval_texts=4"
    )
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    result = run_pretrain_stage(config, paths)
    assert result.info["base_model"] == str((project / "base").resolve())
    assert (paths.pretrained_dir / "model.safetensors").is_file()
