"""Model soups: train.soup_seeds fine-tunes once per seed and saves the mean weights."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from functools import partial
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from components import finetune_run, soup
from components.config import RatchetConfig
from components.errors import ConfigError, TrainingError
from components.finetune import run_finetuning
from components.finetune_run import FinetuneJob, FinetuneResult, encode_texts, evaluate_accuracy
from components.prepare import PreparedData
from components.soup import average_model_folders
from tests.model.test_finetune import DETERMINISTIC, tiny_settings
from tests.model.train_worker import sentiment_data

SHORT = [*DETERMINISTIC, "train.max_steps=6", "train.eval_every_steps=3"]


def soup_settings(tiny_bert_dir: Path, *overrides: str) -> RatchetConfig:
    return tiny_settings(tiny_bert_dir, *SHORT, *overrides)


def single_runs(
    fine_tune: Callable[..., FinetuneResult],
    settings: Callable[..., RatchetConfig],
    data: PreparedData,
    init_model: Path,
    folder: Path,
) -> dict[int, FinetuneResult]:
    """A soup's members trained alone: runs with seeds 42 and 7 (``settings`` with
    ``train.seed``), both started like the seed-42 run (head init, rows)."""
    return {
        seed: fine_tune(
            FinetuneJob(
                settings(f"train.seed={seed}"), data, str(init_model), folder / f"single-{seed}"
            ),
            start_seed=42,
        )
        for seed in (42, 7)
    }


def assert_mean_weights(soup_dir: Path, singles: dict[int, FinetuneResult]) -> None:
    """The soup's weights are exactly the fp32 mean of the two runs' (whose heads differ)."""
    weights = {seed: load_file(r.model_dir / "model.safetensors") for seed, r in singles.items()}
    averaged = load_file(soup_dir / "model.safetensors")
    assert set(averaged) == set(weights[42])
    for name, value in averaged.items():
        expected = (weights[42][name].float() + weights[7][name].float()) / 2
        assert torch.equal(value, expected.to(value.dtype)), name
    assert not torch.equal(weights[42]["classifier.weight"], weights[7]["classifier.weight"])


@pytest.mark.slow
def test_soup_weights_are_the_mean_of_the_runs_with_each_seed(
    tiny_bert_dir: Path, tmp_path: Path
) -> None:
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    data = sentiment_data(64)
    settings = partial(soup_settings, tiny_bert_dir)
    singles = single_runs(finetune_run.finetune_once, settings, data, tiny_bert_dir, tmp_path)
    checkpoints = tmp_path / "checkpoints"
    soup = run_finetuning(
        soup_settings(tiny_bert_dir, "train.soup_seeds=[7]"),
        data,
        str(tiny_bert_dir),
        tmp_path / "soup",
        checkpoints,
    )
    assert_mean_weights(soup.model_dir, singles)

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
    rescored = evaluate_accuracy(
        model, val_ids, data.validation["label"].tolist(), 64, 0, soup.info["precision"]
    )
    assert metrics["val_accuracy"] == pytest.approx(rescored["val_accuracy"])
    assert metrics["val_loss"] == pytest.approx(rescored["val_loss"])
    assert soup.info["soup_seeds"] == "42,7"
    assert tokenizer.model_max_length == 32
    assert list(checkpoints.iterdir()) == []  # members are removed once the soup exists


@pytest.mark.slow
def test_reruns_after_crashes_never_retrain_a_finished_member(
    tiny_bert_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = soup_settings(tiny_bert_dir, "train.soup_seeds=[7]")
    data = sentiment_data(64)
    checkpoints, output = tmp_path / "checkpoints", tmp_path / "soup"
    trained: list[int] = []
    averaged: list[Path] = []
    crash_at: set[str] = {"member 7"}
    train_member, average, score = (
        soup.finetune_once,
        soup.average_model_folders,
        soup.score_saved_model,
    )

    def train_or_crash(member: FinetuneJob, *args: object, **kwargs: object) -> object:
        trained.append(member.config.train.seed)
        if f"member {member.config.train.seed}" in crash_at:
            raise RuntimeError("killed")
        return train_member(member, *args, **kwargs)  # type: ignore[arg-type]

    def average_and_record(members: list[Path], target: Path) -> Path:
        averaged.append(target)
        return average(members, target)

    def score_or_crash(*args: object) -> dict[str, float]:
        if "scoring" in crash_at:
            raise RuntimeError("killed")
        return score(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(soup, "finetune_once", train_or_crash)
    monkeypatch.setattr(soup, "average_model_folders", average_and_record)
    monkeypatch.setattr(soup, "score_saved_model", score_or_crash)

    def rerun_crashing_at(*points: str) -> None:
        crash_at.clear()
        crash_at.update(points)
        with pytest.raises(RuntimeError, match="killed"):
            run_finetuning(config, data, str(tiny_bert_dir), output, checkpoints)

    # 1. Killed while the second member trains: the first is on disk with its record.
    rerun_crashing_at("member 7")
    assert not output.exists()
    first_member = json.loads((checkpoints / "seed-42.json").read_text())
    assert (checkpoints / "seed-42-model" / "model.safetensors").is_file()
    # 2. Killed after the soup was averaged, before it was scored and recorded.
    rerun_crashing_at("scoring")
    assert trained == [42, 7, 7]  # only the unfinished member trained again
    assert averaged == [output]
    # 3. Killed while cleaning up after the soup was recorded.
    real_rmtree = soup.shutil.rmtree

    def rmtree_once(path: Path, *args: object, **kwargs: object) -> None:
        real_rmtree(path, *args, **kwargs)  # type: ignore[arg-type]
        if Path(path).parent == checkpoints:  # the first member folder cleaned up
            monkeypatch.setattr(soup.shutil, "rmtree", real_rmtree)
            raise RuntimeError("killed")

    crash_at.clear()
    monkeypatch.setattr(soup.shutil, "rmtree", rmtree_once)
    with pytest.raises(RuntimeError, match="killed"):
        run_finetuning(config, data, str(tiny_bert_dir), output, checkpoints)
    assert (checkpoints / "soup.json").is_file()
    assert trained == [42, 7, 7] and len(averaged) == 2  # members reused, soup re-averaged
    # 4. The last rerun reuses the recorded soup: no training, no averaging.
    result = run_finetuning(config, data, str(tiny_bert_dir), output, checkpoints)
    assert trained == [42, 7, 7] and len(averaged) == 2
    assert result.metrics["seed_42_val_accuracy"] == first_member["val_accuracy"]
    assert result.metrics["soup_members"] == 2
    assert (result.model_dir / "model.safetensors").is_file()
    assert list(checkpoints.iterdir()) == []


@pytest.mark.slow
def test_members_start_from_the_same_head(
    tiny_bert_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import components.modeling

    heads: list[torch.Tensor] = []
    build = components.modeling.classifier_from_pretrained

    def record_head(*args: object, **kwargs: object) -> object:
        model = build(*args, **kwargs)  # type: ignore[arg-type]
        heads.append(model.classifier.weight.detach().clone())
        return model

    monkeypatch.setattr(components.modeling, "classifier_from_pretrained", record_head)
    data = sentiment_data(64)
    config = soup_settings(tiny_bert_dir, "train.soup_seeds=[7]", "train.max_steps=1")
    run_finetuning(config, data, str(tiny_bert_dir), tmp_path / "soup")
    single = soup_settings(tiny_bert_dir, "train.seed=7", "train.max_steps=1")
    run_finetuning(single, data, str(tiny_bert_dir), tmp_path / "single")
    soup_heads, single_head = heads[:2], heads[2]
    assert torch.equal(soup_heads[0], soup_heads[1])
    assert not torch.equal(soup_heads[1], single_head)  # seed 7 alone starts elsewhere


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
    original = finetune_run.select_rows

    def record_pick(frame: object, max_samples: int | None, seed: int) -> object:
        picks.append((max_samples, seed))
        return original(frame, max_samples, seed)  # type: ignore[arg-type]

    monkeypatch.setattr(finetune_run, "select_rows", record_pick)
    run_finetuning(config, sentiment_data(64), str(tiny_bert_dir), tmp_path / "soup")
    # Both members' training and validation rows, and the soup's scoring rows.
    assert sorted(set(picks)) == [(20, 42), (48, 42)]
    assert len(picks) == 5
