"""Token classifier: first-sub-token labels, a tiny model fits a separable toy set, exact resume."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from safetensors.torch import load_file

from components.config import RatchetConfig, load_config
from components.errors import ConfigError
from components.finetune import run_finetuning
from components.prepare import PreparedData
from components.token_finetune import IGNORED, encode_words
from tests.conftest import PROJECT_ROOT
from tests.data.test_token_validate import toy_sentences

TAGS = ["O", "B-LOC", "I-LOC", "B-PER", "I-PER"]


def token_data(train: int = 80, validation: int = 20) -> PreparedData:
    def frame(rows: list[dict]) -> pd.DataFrame:
        prepared = pd.DataFrame(rows)
        prepared["tag_ids"] = prepared["tags"].map(lambda tags: [TAGS.index(t) for t in tags])
        prepared["text"] = prepared["tokens"].map(" ".join)
        return prepared

    return PreparedData(
        train=frame(toy_sentences(train, 0)),
        validation=frame(toy_sentences(validation, train)),
        test=frame(toy_sentences(validation, train + validation)),
        labels=TAGS,
    )


def token_settings(tiny_bert_dir: Path, *overrides: str) -> RatchetConfig:
    return load_config(
        PROJECT_ROOT / "params.yaml",
        [PROJECT_ROOT / "configs" / "smoke.yaml", PROJECT_ROOT / "configs" / "conll.yaml"],
        [f"model.base={tiny_bert_dir}", *overrides],
    )


def test_tags_go_to_the_first_sub_token_of_each_word(tiny_bert_dir: Path) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_bert_dir)
    words = ["Farid", "Smith", "flew", "to", "Quito"]  # far ##id, quit ##o
    encoded = encode_words(tokenizer, [words], [[3, 4, 0, 0, 1]], 32)
    pieces = tokenizer.convert_ids_to_tokens(encoded.input_ids[0])
    assert pieces == ["[CLS]", "far", "##id", "smith", "flew", "to", "quit", "##o", "[SEP]"]
    assert encoded.labels[0] == [IGNORED, 3, IGNORED, 4, 0, 0, 1, IGNORED, IGNORED]
    assert encoded.first_positions[0] == [1, 3, 4, 5, 6]
    assert encoded.word_indices[0] == [0, 1, 2, 3, 4]
    cut = encode_words(tokenizer, [words], [[3, 4, 0, 0, 1]], 5)
    assert cut.word_indices[0] == [0, 1]  # the window keeps [CLS] far ##id smith [SEP]
    assert cut.labels[0] == [IGNORED, 3, IGNORED, 4, IGNORED]


@pytest.fixture(scope="module")
def fitted(tiny_bert_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A tiny token classifier trained once on the toy set (40 steps)."""
    folder = tmp_path_factory.mktemp("token-classifier")
    config = token_settings(
        tiny_bert_dir,
        "train.lr=3e-3",
        "train.max_steps=40",
        "train.epochs=10",
        "train.eval_every_steps=20",
        "train.batch_size=8",
    )
    steps: list[dict[str, float]] = []
    result = run_finetuning(
        config,
        token_data(),
        str(tiny_bert_dir),
        folder / "model",
        folder / "checkpoints",
        lambda step, metrics: steps.append(metrics),
    )
    return {"config": config, "result": result, "steps": steps, "folder": folder}


def test_tiny_token_classifier_fits_a_separable_toy_set(fitted: dict[str, Any]) -> None:
    from transformers import AutoModelForTokenClassification

    result, steps = fitted["result"], fitted["steps"]
    assert result.metrics["val_entity_f1"] >= 0.9
    assert result.metrics["val_accuracy"] >= 0.95
    assert steps[-1]["loss"] < steps[0]["loss"] * 0.75
    assert "val_entity_f1" in steps[19] and len(steps) == 40
    model = AutoModelForTokenClassification.from_pretrained(result.model_dir)
    assert model.config.id2label == dict(enumerate(TAGS))
    assert not list((fitted["folder"] / "checkpoints").glob("step-*"))


def test_evaluation_scores_the_test_split_and_writes_its_files(
    fitted: dict[str, Any], tmp_path: Path
) -> None:
    from components.token_evaluate import entity_metrics, evaluate_token_model

    data = token_data()
    report = evaluate_token_model(
        fitted["result"].model_dir, data.test, TAGS, fitted["config"].eval, tmp_path, 32
    )
    assert report.metrics["entity_f1"] >= 0.9
    assert report.metrics["f1"] == report.metrics["entity_f1"]
    assert report.metrics == pytest.approx(
        {**entity_metrics(report.gold, report.predicted), **latency(report.metrics)}
    )
    assert report.gold == data.test["tags"].tolist()
    assert sorted(report.artifacts) == [
        "entity_confusion.csv",
        "entity_confusion.png",
        "eval.json",
        "missed_entities.csv",
        "predictions.jsonl",
        "spurious_entities.csv",
    ]
    with pytest.raises(ConfigError, match="model tags .* differ from the data's tags"):
        evaluate_token_model(
            fitted["result"].model_dir, data.test, TAGS[::-1], fitted["config"].eval, tmp_path
        )


def latency(metrics: dict[str, float]) -> dict[str, float]:
    return {key: value for key, value in metrics.items() if key.startswith("latency")}


class Interrupt(Exception):
    pass


def test_interrupted_run_resumes_exactly(tiny_bert_dir: Path, tmp_path: Path) -> None:
    config = token_settings(
        tiny_bert_dir,
        "train.max_steps=10",
        "train.batch_size=8",
        "train.checkpoint_every_steps=4",
        "train.checkpoint_every_minutes=null",
        "train.eval_every_steps=100",
        "train.deterministic=true",
    )
    data = token_data(48, 8)
    straight = run_finetuning(config, data, str(tiny_bert_dir), tmp_path / "straight")

    def stop_at_six(step: int, metrics: dict[str, float]) -> None:
        if step == 6:
            raise Interrupt

    checkpoints = tmp_path / "checkpoints"
    with pytest.raises(Interrupt):
        run_finetuning(
            config, data, str(tiny_bert_dir), tmp_path / "resumed", checkpoints, stop_at_six
        )
    assert [p.name for p in checkpoints.glob("step-*")] == ["step-00000004"]
    steps: list[int] = []
    resumed = run_finetuning(
        config,
        data,
        str(tiny_bert_dir),
        tmp_path / "resumed",
        checkpoints,
        lambda step, metrics: steps.append(step),
    )
    assert steps[0] == 5
    before = load_file(straight.model_dir / "model.safetensors")
    after = load_file(resumed.model_dir / "model.safetensors")
    assert before.keys() == after.keys()
    assert all((before[name] == after[name]).all() for name in before)
    assert resumed.metrics["val_entity_f1"] == straight.metrics["val_entity_f1"]
