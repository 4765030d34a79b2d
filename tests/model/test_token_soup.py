"""Model soups of token classifiers: one member per seed, mean weights, entity-F1 scores."""

from __future__ import annotations

import json
from functools import partial
from pathlib import Path

import pytest

from components import soup
from components.config import RatchetConfig
from components.finetune import run_finetuning
from components.finetune_run import FinetuneJob
from components.token_finetune import finetune_tokens_once
from tests.model.test_soup import assert_mean_weights, single_runs
from tests.model.test_token_finetune import TAGS, token_data, token_settings

# Short, bitwise-repeatable runs that evaluate once, at the end (kept = last weights).
SHORT = [
    "train.lr=3e-3",
    "train.max_steps=8",
    "train.batch_size=8",
    "train.eval_every_steps=100",
    "train.checkpoint_every_steps=4",
    "train.checkpoint_every_minutes=null",
    "train.deterministic=true",
    "train.precision=fp32",
]


def soup_settings(tiny_bert_dir: Path, *overrides: str) -> RatchetConfig:
    return token_settings(tiny_bert_dir, *SHORT, *overrides)


@pytest.mark.slow
def test_token_soup_weights_are_the_mean_of_the_runs_with_each_seed(
    tiny_bert_dir: Path, tmp_path: Path
) -> None:
    from components.token_evaluate import evaluate_token_model

    data = token_data(48, 16)
    settings = partial(soup_settings, tiny_bert_dir)
    singles = single_runs(finetune_tokens_once, settings, data, tiny_bert_dir, tmp_path)
    checkpoints = tmp_path / "checkpoints"
    config = soup_settings(tiny_bert_dir, "train.soup_seeds=[7]")
    result = run_finetuning(config, data, str(tiny_bert_dir), tmp_path / "soup", checkpoints)
    assert_mean_weights(result.model_dir, singles)

    metrics = result.metrics
    assert metrics["soup_members"] == 2
    assert metrics["steps"] == 16
    for seed, single in singles.items():
        assert metrics[f"seed_{seed}_val_entity_f1"] == single.metrics["val_entity_f1"]
    assert not [key for key in metrics if key.startswith("seed_") and "accuracy" in key]
    assert result.info["soup_seeds"] == "42,7"
    # The reported scores are the soup's own: the evaluation's tagger agrees on them.
    report = evaluate_token_model(
        result.model_dir, data.validation, TAGS, config.eval, tmp_path / "eval", 32
    )
    assert metrics["val_entity_f1"] == pytest.approx(report.metrics["entity_f1"])
    assert metrics["val_accuracy"] == pytest.approx(report.metrics["token_accuracy"])
    assert list(checkpoints.iterdir()) == []  # members are removed once the soup exists


@pytest.mark.slow
def test_a_rerun_of_a_token_soup_reuses_its_finished_member(
    tiny_bert_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = soup_settings(tiny_bert_dir, "train.soup_seeds=[7]")
    data = token_data(48, 16)
    checkpoints, output = tmp_path / "checkpoints", tmp_path / "soup"
    trained: list[int] = []
    train_member = soup.finetune_tokens_once

    def train_or_crash(member: FinetuneJob, *args: object, **kwargs: object) -> object:
        trained.append(member.config.train.seed)
        if trained == [42, 7]:
            raise RuntimeError("killed")
        return train_member(member, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(soup, "finetune_tokens_once", train_or_crash)
    with pytest.raises(RuntimeError, match="killed"):
        run_finetuning(config, data, str(tiny_bert_dir), output, checkpoints)
    assert not output.exists()
    first_member = json.loads((checkpoints / "seed-42.json").read_text())
    assert (checkpoints / "seed-42-model" / "model.safetensors").is_file()

    result = run_finetuning(config, data, str(tiny_bert_dir), output, checkpoints)
    assert trained == [42, 7, 7]  # only the unfinished member trained again
    assert result.metrics["seed_42_val_entity_f1"] == first_member["val_entity_f1"]
    assert set(result.metrics) >= {"val_entity_f1", "seed_7_val_entity_f1"}
    assert result.metrics["steps"] == 16
    assert (output / "model.safetensors").is_file()
    assert list(checkpoints.iterdir()) == []
