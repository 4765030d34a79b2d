"""The token-classification GE suite: a clean toy set passes, each rule rejects its bad case."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from components.config import DataConfig
from components.errors import DataValidationError
from components.ingest import RawDataset
from components.token_validate import validate_token_dataset

PEOPLE = ["Anna", "Boris", "Carla", "Dmitri", "Elena", "Farid", "Greta", "Hiro", "Ines", "Jonas"]
CITIES = ["Paris", "Oslo", "Lima", "Rome", "Kyiv", "Quito", "Perth", "Cairo", "Delhi", "Bern"]


def toy_sentences(count: int, offset: int) -> list[dict[str, Any]]:
    """Distinct sentences, each with a PER and a LOC entity."""
    rows = []
    for index in range(offset, offset + count):
        person, city = PEOPLE[index % 10], CITIES[(index // 10) % 10]
        rows.append(
            {
                "tokens": [person, "Smith", "flew", "to", city, "on", f"day{index}"],
                "tags": ["B-PER", "I-PER", "O", "O", "B-LOC", "O", "O"],
            }
        )
    return rows


def toy_splits() -> dict[str, list[dict[str, Any]]]:
    return {"train": toy_sentences(40, 0), "dev": toy_sentences(10, 40), "test": toy_sentences(10, 50)}


def as_raw(splits: dict[str, list[dict[str, Any]]]) -> RawDataset:
    frames = {}
    for name, rows in splits.items():
        frame = pd.DataFrame(rows)
        frame["text"] = frame["tokens"].map(" ".join)
        frame["line"] = range(1, len(frame) + 1)
        frames[name] = frame
    return RawDataset(
        source="toy", splits=frames, files={name: f"{name}.txt" for name in splits}
    )


def cfg(**checks: Any) -> DataConfig:
    return DataConfig.model_validate(
        {"task": "token-classification", "labels": None, "checks": checks}
    )


def failures_of(splits: dict[str, list[dict[str, Any]]], **kwargs: Any) -> DataValidationError:
    data_cfg = kwargs.pop("data_cfg", cfg())
    with pytest.raises(DataValidationError) as raised:
        validate_token_dataset(as_raw(splits), data_cfg, **kwargs)
    return raised.value


def test_clean_toy_set_passes() -> None:
    report = validate_token_dataset(as_raw(toy_splits()), cfg())
    assert report.success and report.row_counts == {"train": 40, "dev": 10, "test": 10}
    assert len(report.checks) == 7


def only_failure(error: DataValidationError) -> dict[str, Any]:
    assert len(error.failures) == 1, [f["description"] for f in error.failures]
    return error.failures[0]


def test_unequal_tokens_and_tags() -> None:
    splits = toy_splits()
    splits["train"][3]["tags"] = splits["train"][3]["tags"][:-1]
    failure = only_failure(failures_of(splits))
    assert failure["description"] == "as many tags as tokens"
    assert failure["examples"][0] | {"text": None} == {
        "file": "train.txt", "line": 4, "text": None, "problem": "7 tokens, 6 tags"
    }


def test_tag_outside_declared_set() -> None:
    splits = toy_splits()
    splits["dev"][0]["tags"] = ["B-PER", "I-PER", "O", "O", "B-LOC", "O", "B-DATE"]
    data_cfg = DataConfig.model_validate(
        {"task": "token-classification", "labels": ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]}
    )
    error = failures_of(splits, data_cfg=data_cfg)
    failure = only_failure(error)
    assert failure["description"].startswith("tags within the tag set ['O', 'B-PER'")
    assert failure["examples"][0]["problem"] == "B-DATE"
    assert "dev.txt line 1 (B-DATE): 'Anna Smith flew to Kyiv on day40'" in str(error)


def test_inferred_set_rejects_tags_that_are_not_iob() -> None:
    splits = toy_splits()
    splits["test"][2]["tags"][5] = "DATE"
    assert only_failure(failures_of(splits))["examples"][0]["problem"] == "DATE"


def test_invalid_iob2_reports_the_sentence() -> None:
    splits = toy_splits()
    splits["train"][7]["tags"] = ["I-PER", "I-PER", "O", "O", "B-LOC", "O", "O"]
    error = failures_of(splits)
    failure = only_failure(error)
    assert failure["examples"][0]["line"] == 8
    assert failure["examples"][0]["problem"] == "token 1: I-PER follows O"
    assert "data.repair_iob1" in str(error)


def test_empty_sentence() -> None:
    splits = toy_splits()
    splits["train"].append({"tokens": [], "tags": []})
    failure = only_failure(failures_of(splits))
    assert failure["description"] == "no empty sentences"
    assert failure["examples"][0]["line"] == 41


def test_entity_type_missing_from_a_split() -> None:
    splits = toy_splits()
    for row in splits["test"]:
        row["tags"][4] = "O"  # no LOC left in test
    failure = only_failure(failures_of(splits))
    assert failure["description"] == "every entity type at least 2% of each split's entities"
    assert failure["examples"][0]["problem"] == "split 'test': LOC 0.0% of entities"


def test_duplicate_sentences_over_the_limit() -> None:
    splits = toy_splits()
    splits["train"] += [dict(splits["train"][0]) for _ in range(8)]
    failure = only_failure(failures_of(splits))
    assert failure["description"] == "duplicate sentences at most 10%"
    assert failure["observed"].startswith("8 of 68 rows")


def test_held_out_sentence_also_in_train() -> None:
    splits = toy_splits()
    splits["test"][4] = dict(splits["train"][9])
    failure = only_failure(failures_of(splits))
    assert failure["description"] == "at most 0 held-out sentences also in train"
    assert failure["observed"] == 1
    assert (failure["examples"][0]["file"], failure["examples"][0]["line"]) == ("test.txt", 5)


def test_sentences_longer_than_the_window(tiny_bert_dir: Path) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_bert_dir)
    splits = toy_splits()
    for row in splits["train"][:5]:  # 12.5% of train, 8% of all: over 5%
        row["tokens"] = row["tokens"][:-1] + ["supercalifragilisticexpialidocious"]
    error = failures_of(splits, tokenizer=tokenizer, max_length=12)
    failure = only_failure(error)
    assert failure["description"].startswith("sentences longer than model.max_length=12")
    report = validate_token_dataset(as_raw(toy_splits()), cfg(), None, tokenizer, 12)
    assert len(report.checks) == 8
