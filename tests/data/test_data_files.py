"""What a data path means: one file is one data set to split; a folder's files are matched
to splits by name; anything ambiguous is an error that says what to rename."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from components.config import DataConfig
from components.data_files import TOKEN_FORMATS, locate_split_files, splits_named
from components.errors import DataError, DataValidationError
from components.ingest import read_dataset, snapshot_source
from components.prepare import prepare_splits
from components.token_data import read_token_dataset
from components.token_prepare import prepare_token_splits
from components.validate import validate_dataset

TOPICS = ["World", "Sports", "Business"]


def news_rows(count: int) -> pd.DataFrame:
    """An AG-News-like labelled file: three topics, distinct texts."""
    return pd.DataFrame(
        {
            "text": [
                f"headline number {index} about {TOPICS[index % 3]}" for index in range(count)
            ],
            "label": [TOPICS[index % 3] for index in range(count)],
        }
    )


def news_cfg() -> DataConfig:
    return DataConfig.model_validate(
        {"text_column": "text", "label_column": "label", "labels": None}
    )


def touch(folder: Path, *names: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        (folder / name).write_text("text,label\na,b\n", encoding="utf-8")


def test_a_single_file_named_test_csv_is_one_data_set_split_three_ways(tmp_path: Path) -> None:
    source = tmp_path / "ag_news" / "test.csv"
    source.parent.mkdir()
    news_rows(300).to_csv(source, index=False)
    # The retrain flow and `ratchet ingest` snapshot the file into data/raw and read that
    # folder: it used to say "data/incoming has ['test'] files but no train file".
    raw_dir = tmp_path / "project" / "data" / "raw"
    assert snapshot_source(str(source), tmp_path, raw_dir) == [Path("test.csv")]
    for path in (source, raw_dir):
        raw = read_dataset(str(path), news_cfg(), tmp_path)
        assert raw.row_counts == {"all": 300}
    validate_dataset(raw, news_cfg())
    prepared = prepare_splits(raw, news_cfg())
    sizes = {name: len(prepared.split(name)) for name in ("train", "validation", "test")}
    assert sum(sizes.values()) == 300 and all(20 <= size <= 250 for size in sizes.values())
    assert prepared.labels == ["Business", "Sports", "World"]


@pytest.mark.parametrize(
    ("names", "expected"),
    [
        ("train.csv dev.csv test.csv", "train=train.csv dev=dev.csv test=test.csv"),
        ("sst2_train.tsv sst2_validation.tsv", "train=sst2_train.tsv dev=sst2_validation.tsv"),
        (
            "train-00000-of-00001.parquet test-00000-of-00001.parquet README.md .hidden.csv",
            "train=train-00000-of-00001.parquet test=test-00000-of-00001.parquet",
        ),
        ("Training.CSV valid.csv testing.csv", "train=Training.CSV dev=valid.csv test=testing.csv"),
        ("contest_train.jsonl val.jsonl", "train=contest_train.jsonl dev=val.jsonl"),
    ],
)
def test_folder_files_are_matched_to_splits_by_the_words_of_their_names(
    tmp_path: Path, names: str, expected: str
) -> None:
    touch(tmp_path, *names.split())
    found = locate_split_files(tmp_path)
    assert {split: path.name for split, path in found.items()} == dict(
        pair.split("=") for pair in expected.split()
    )


def test_a_folder_with_one_data_file_reads_as_that_file(tmp_path: Path) -> None:
    touch(tmp_path / "a", "test.csv", "NOTES.md")
    touch(tmp_path / "b", "train.csv")
    assert locate_split_files(tmp_path / "a") == {"all": tmp_path / "a" / "test.csv"}
    assert locate_split_files(tmp_path / "b") == {"train": tmp_path / "b" / "train.csv"}
    assert splits_named("train_test_split") == {"train", "test"}


@pytest.mark.parametrize(
    ("names", "message"),
    [
        (
            ["train.csv", "sst2_train.csv", "test.csv"],
            "sst2_train.csv and train.csv both look like the train split: keep one (merge "
            "shards into one file, or move the other out of the folder), or point data.source "
            "at one file to split it",
        ),
        (
            ["train.csv", "data.csv"],
            "cannot tell which split data.csv hold(s): a file name must contain one of train, "
            "validation (valid, val, dev) or test, as in train.csv or sst2_train.csv; rename "
            "data.csv to test.csv if it holds that split, or move it out of the folder, or "
            "point data.source at one file to split it",
        ),
        (
            ["part1.csv", "part2.csv"],
            "cannot tell which split part1.csv, part2.csv hold(s): a file name must contain one "
            "of train, validation (valid, val, dev) or test, as in train.csv or sst2_train.csv; "
            "rename them to train.csv, validation.csv and test.csv, or point data.source at "
            "one file to split it",
        ),
        (
            ["train_test.csv", "test.csv"],
            "cannot tell which split train_test.csv hold(s)",
        ),
        (
            ["dev.csv", "test.csv"],
            "has dev.csv (validation), test.csv (test) but no train file: rename the training "
            "data to train.csv, or point data.source at one file to split it into "
            "train/validation/test (data.split)",
        ),
    ],
)
def test_ambiguous_folders_say_what_to_rename(
    tmp_path: Path, names: list[str], message: str
) -> None:
    touch(tmp_path, *names)
    with pytest.raises(DataError) as raised:
        locate_split_files(tmp_path)
    assert message in str(raised.value)


def test_a_folder_of_the_other_task_s_files_names_data_task(tmp_path: Path) -> None:
    touch(tmp_path / "ner", "train.txt", "test.txt")
    with pytest.raises(
        DataError, match="CoNLL token/tag data: set data.task: token-classification"
    ):
        locate_split_files(tmp_path / "ner")
    touch(tmp_path / "hub" / "data", "train-00000-of-00001.parquet")
    with pytest.raises(DataError) as raised:
        locate_split_files(tmp_path / "hub")
    assert str(raised.value) == (
        f"{tmp_path / 'hub'} holds no data files of the types .csv, .tsv, .jsonl, .ndjson, "
        ".parquet; files: none; subfolders ['data'] are not read: point data.source at the "
        "folder (or file) that holds the data"
    )
    touch(tmp_path / "tables", "train.csv", "test.csv")
    with pytest.raises(DataError, match="for a table of texts and labels set data.task: text-"):
        locate_split_files(tmp_path / "tables", TOKEN_FORMATS)


def conll(sentences: int) -> str:
    blocks = [f"Anna{index} B-PER\nvisited O\nParis B-LOC\n" for index in range(sentences)]
    return "-DOCSTART- O\n\n" + "\n".join(blocks)


def token_cfg() -> DataConfig:
    return DataConfig.model_validate({"task": "token-classification", "labels": None})


def test_a_single_conll_file_is_split_by_sentences(tmp_path: Path) -> None:
    (tmp_path / "test.conll").write_text(conll(200), encoding="utf-8")
    raw = read_token_dataset("test.conll", token_cfg(), tmp_path)
    assert raw.row_counts == {"all": 200}
    prepared = prepare_token_splits(raw, token_cfg())
    sizes = [len(prepared.split(name)) for name in ("train", "validation", "test")]
    assert sum(sizes) == 200 and min(sizes) >= 5
    assert prepared.labels == ["O", "B-LOC", "I-LOC", "B-PER", "I-PER"]


def test_token_folders_match_by_name_and_jsonl_of_texts_names_data_task(tmp_path: Path) -> None:
    for name in ("conll_train.txt", "conll_valid.txt", "conll_test.txt"):
        (tmp_path / "ner" / name).parent.mkdir(exist_ok=True)
        (tmp_path / "ner" / name).write_text(conll(3), encoding="utf-8")
    raw = read_token_dataset("ner", token_cfg(), tmp_path)
    assert raw.row_counts == {"train": 3, "dev": 3, "test": 3}
    (tmp_path / "rows.jsonl").write_text('{"text": "a film", "label": "pos"}\n')
    with pytest.raises(DataError) as raised:
        read_token_dataset("rows.jsonl", token_cfg(), tmp_path)
    assert str(raised.value) == (
        f"{tmp_path / 'rows.jsonl'} line 1: no 'tokens' list (keys: ['label', 'text']); "
        "data.task token-classification reads JSONL rows of tokens/tags lists: for rows of a "
        "text and a label, set data.task: text-classification"
    )


def test_token_lists_read_as_a_table_name_data_task(tmp_path: Path) -> None:
    (tmp_path / "rows.jsonl").write_text('{"tokens": ["Paris"], "tags": ["B-LOC"]}\n' * 30)
    raw = read_dataset("rows.jsonl", news_cfg(), tmp_path)
    with pytest.raises(DataValidationError) as raised:
        validate_dataset(raw, news_cfg())
    assert (
        "no column 'text'; columns are ['tags', 'tokens'] (token/tag lists: set data.task: "
        "token-classification to read them)" in str(raised.value)
    )
