"""Model soups: train.soup_seeds fine-tunes once per seed and saves the mean weights."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from components import finetune
from components.config import RatchetConfig
from components.errors import ConfigError, TrainingError
from components.finetune import encode_texts, evaluate_accuracy, run_finetuning
from components.soup import average_model_folders
from tests.model.test_finetune import DETERMINISTIC, tiny_settings
from tests.model.train_worker import sentiment_data

SHORT = [*DETERMINISTIC, "train.max_steps=6", "train.eval_every_steps=3"]


def soup_settings(tiny_bert_dir: Path, *overrides: str) -> RatchetConfig:
    return tiny_settings(tiny_bert_dir, *SHORT, *overrides)


@pytest.mark.slow
def test_soup_weights_are_the_mean_of_the_runs_with_each_seed(
    tiny_bert_dir: Path, tmp_path: Path
) -> None:
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    data = sentiment_data(64)
    singles = {
        seed: run_finetuning(
            soup_settings(tiny_bert_dir, f"train.seed={seed}"),
            data,
            str(tiny_bert_dir),
            tmp_path / f"single-{seed}",
        )
        for seed in (42, 7)
    }
    checkpoints = tmp_path / "checkpoints"
    soup = run_finetuning(
        soup_settings(tiny_bert_dir, "train.soup_seeds=[7]"),
        data,
        str(tiny_bert_dir),
        tmp_path / "soup",
        checkpoints,
    )
    weights = {seed: load_file(r.model_dir / "model.safetensors") for seed, r in singles.items()}
    averaged = load_file(soup.model_dir / "model.safetensors")
    assert set(averaged) == set(weights[42])
    for name, value in averaged.items():
        expected = (weights[42][name].float() + weights[7][name].float()) / 2
        assert torch.allclose(value.float(), expected, atol=1e-6), name
    assert not torch.equal(weights[42]["classifier.weight"], weights[7]["classifier.weight"])

    metrics = soup.metrics
    assert metrics["soup_members"] == 2
    assert metrics["steps"] == singles[42].metrics["steps"] + singles[7].metrics["steps"]
    for seed, single in singles.items():
        assert metrics[f"seed_{seed}_val_accuracy"] == pytest.approx(
            single.metrics["val_accuracy"], abs=1e-6
        )
    # The reported scores are the soup's own, not a member's.
    model = AutoModelForSequenceClassification.from_pretrained(soup.model_dir)
    tokenizer = AutoTokenizer.from_pretrained(soup.model_dir)
    val_ids = encode_texts(tokenizer, data.validation["text"].tolist(), 32)
    rescored = evaluate_accuracy(model, val_ids, data.validation["label"].tolist(), 64, 0)
    assert metrics["val_accuracy"] == pytest.approx(rescored["val_accuracy"])
    assert metrics["val_loss"] == pytest.approx(rescored["val_loss"])
    assert soup.info["soup_seeds"] == "42,7"
    assert tokenizer.model_max_length == 32
    assert list(checkpoints.iterdir()) == []  # members are removed once the soup exists


@pytest.mark.slow
def test_a_rerun_after_a_crash_retrains_only_the_unfinished_members(
    tiny_bert_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = soup_settings(tiny_bert_dir, "train.soup_seeds=[7]")
    data = sentiment_data(64)
    trained: list[int] = []
    original = finetune.finetune_once

    def crash_on_seed_7(member_config: RatchetConfig, *args: object, **kwargs: object) -> object:
        trained.append(member_config.train.seed)
        if member_config.train.seed == 7:
            raise RuntimeError("killed")
        return original(member_config, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(finetune, "finetune_once", crash_on_seed_7)
    checkpoints = tmp_path / "checkpoints"
    with pytest.raises(RuntimeError, match="killed"):
        run_finetuning(config, data, str(tiny_bert_dir), tmp_path / "soup", checkpoints)
    assert not (tmp_path / "soup").exists()
    saved = json.loads((checkpoints / "seed-42.json").read_text())
    assert (checkpoints / "seed-42-model" / "model.safetensors").is_file()

    def record_seed(member_config: RatchetConfig, *args: object, **kwargs: object) -> object:
        trained.append(member_config.train.seed)
        return original(member_config, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(finetune, "finetune_once", record_seed)
    result = run_finetuning(config, data, str(tiny_bert_dir), tmp_path / "soup", checkpoints)
    assert trained == [42, 7, 7]  # the finished seed-42 member was reused
    assert result.metrics["seed_42_val_accuracy"] == saved["val_accuracy"]
    assert (result.model_dir / "model.safetensors").is_file()


def test_models_that_do_not_line_up_are_refused(tiny_bert_dir: Path, tmp_path: Path) -> None:
    first, second = tmp_path / "a", tmp_path / "b"
    shutil.copytree(tiny_bert_dir, first)
    shutil.copytree(tiny_bert_dir, second)
    config = json.loads((second / "config.json").read_text())
    config["id2label"] = {"0": "bad", "1": "good"}
    (second / "config.json").write_text(json.dumps(config))
    output = tmp_path / "soup"
    with pytest.raises(TrainingError, match=r"configs differ in \['id2label'\]"):
        average_model_folders([first, second], output)
    with pytest.raises(TrainingError, match="at least two models"):
        average_model_folders([first], output)
    assert sorted(path.name for path in tmp_path.iterdir()) == ["a", "b"]  # nothing written

    # Same config, but one weight reshaped: refused by name, and no partial folder left.
    shutil.copy(first / "config.json", second / "config.json")
    tensors = load_file(second / "model.safetensors")
    name = next(key for key, value in tensors.items() if value.ndim == 2)
    tensors[name] = tensors[name][:1]
    from safetensors.torch import save_file

    save_file(tensors, second / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(TrainingError, match=f"cannot average {name}: shapes"):
        average_model_folders([first, second], output)
    assert sorted(path.name for path in tmp_path.iterdir()) == ["a", "b"]


def test_a_soup_seed_equal_to_the_run_seed_is_refused(tiny_bert_dir: Path) -> None:
    with pytest.raises(ConfigError, match="repeats a seed"):
        tiny_settings(tiny_bert_dir, "train.soup_seeds=[42]")
    with pytest.raises(ConfigError, match="repeats a seed"):
        tiny_settings(tiny_bert_dir, "train.soup_seeds=[3, 3]")


def test_members_train_and_validate_on_the_primary_seeds_rows(
    tiny_bert_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = soup_settings(
        tiny_bert_dir,
        "train.soup_seeds=[7]",
        "train.max_train_samples=48",
        "train.max_eval_samples=20",
    )
    picks: list[tuple[int | None, int]] = []
    original = finetune.select_rows

    def record_pick(frame: object, max_samples: int | None, seed: int) -> object:
        picks.append((max_samples, seed))
        return original(frame, max_samples, seed)  # type: ignore[arg-type]

    monkeypatch.setattr(finetune, "select_rows", record_pick)
    run_finetuning(config, sentiment_data(64), str(tiny_bert_dir), tmp_path / "soup")
    # Both members' training and validation rows, and the soup's scoring rows.
    assert sorted(set(picks)) == [(20, 42), (48, 42)]
    assert len(picks) == 5
