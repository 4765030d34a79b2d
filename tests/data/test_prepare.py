"""Prepare: stable hash splits, the data set's own test split, stats, atomic writes."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pyarrow as pa
import pytest

from components.config import DataConfig
from components.errors import DataError
from components.ingest import RawDataset, read_dataset
from components.prepare import (
    PreparedData,
    assign_splits,
    load_prepared,
    prepare_splits,
    write_prepared,
)
from components.versioning import file_md5
from tests.conftest import make_sentiment_rows


def raw_from(frames: dict[str, pd.DataFrame]) -> RawDataset:
    splits = {
        name: pd.DataFrame(
            {
                "text": frame["sentence"].tolist(),
                "label": frame["label"].astype(str).tolist(),
                "line": range(2, len(frame) + 2),
            }
        )
        for name, frame in frames.items()
    }
    return RawDataset(source="inline", splits=splits)


def test_split_of_existing_rows_survives_appends() -> None:
    texts = make_sentiment_rows(600, seed=3)["sentence"]
    before = assign_splits(texts[:400], seed=42, validation_fraction=0.1, test_fraction=0.1)
    after = assign_splits(texts, seed=42, validation_fraction=0.1, test_fraction=0.1)
    assert after[:400].tolist() == before.tolist()
    other_seed = assign_splits(texts[:400], seed=7, validation_fraction=0.1, test_fraction=0.1)
    assert other_seed.tolist() != before.tolist()


def test_split_shares_are_close_to_the_fractions_in_every_class() -> None:
    rows = make_sentiment_rows(4000, seed=5)
    names = assign_splits(rows["sentence"], seed=42, validation_fraction=0.1, test_fraction=0.2)
    shares = pd.crosstab(rows["label"], names, normalize="index")
    assert shares["validation"].between(0.08, 0.12).all(), shares
    assert shares["test"].between(0.17, 0.23).all(), shares


def test_whitespace_variants_land_in_the_same_split() -> None:
    texts = pd.Series([f"film number {i}" for i in range(50)] * 2)
    texts[50:] = [f"  film   number {i} " for i in range(50)]
    names = assign_splits(texts, seed=1, validation_fraction=0.3, test_fraction=0.3)
    assert names[:50].tolist() == names[50:].tolist()


def test_case_and_unicode_variants_land_in_the_same_split() -> None:
    """Variants the shipped uncased tokenizer turns into identical token ids."""
    import unicodedata

    originals = [f"Café crème number {i}" for i in range(60)]
    variants = {
        "upper": [text.upper() for text in originals],
        "lower": [text.lower() for text in originals],
        "nfd": [unicodedata.normalize("NFD", text) for text in originals],
        "no accents": [f"Cafe creme number {i}" for i in range(60)],
        "zero-width": [text.replace(" ", " \u200b", 1) for text in originals],
    }
    reference = assign_splits(pd.Series(originals), 1, 0.3, 0.3).tolist()
    assert {"train", "validation", "test"} <= set(reference)
    for name, texts in variants.items():
        assert assign_splits(pd.Series(texts), 1, 0.3, 0.3).tolist() == reference, name


def test_dev_becomes_test_and_validation_is_carved_from_train(data_cfg: DataConfig) -> None:
    rows = make_sentiment_rows(300, seed=2)
    raw = raw_from({"train": rows.iloc[:250], "dev": rows.iloc[250:]})
    prepared = prepare_splits(raw, data_cfg)
    assert prepared.test["text"].tolist() == rows["sentence"].iloc[250:].tolist()
    assert len(prepared.train) + len(prepared.validation) == 250
    assert 10 <= len(prepared.validation) <= 45
    assert prepared.labels == ["negative", "positive"]
    assert set(prepared.train["label_name"]) == {"negative", "positive"}
    assert prepared.train["label"].dtype == "int64"


def test_own_test_split_is_kept_and_dev_is_validation(data_cfg: DataConfig) -> None:
    rows = make_sentiment_rows(90, seed=4)
    raw = raw_from({"train": rows.iloc[:60], "dev": rows.iloc[60:75], "test": rows.iloc[75:]})
    prepared = prepare_splits(raw, data_cfg)
    assert [len(prepared.split(n)) for n in ("train", "validation", "test")] == [60, 15, 15]


def test_single_file_gets_three_disjoint_splits(data_cfg: DataConfig) -> None:
    rows = make_sentiment_rows(400, seed=6)
    rows = pd.concat([rows, rows.iloc[:10]])  # exact duplicates are dropped
    prepared = prepare_splits(raw_from({"all": rows}), data_cfg)
    texts = [set(prepared.split(n)["text"]) for n in ("train", "validation", "test")]
    assert sum(len(t) for t in texts) == 400
    assert not (texts[0] & texts[1]) and not (texts[0] & texts[2]) and not (texts[1] & texts[2])


def test_string_labels_map_by_name_and_alias(tmp_path: Path) -> None:
    frame = make_sentiment_rows(200, seed=8)
    frame["label"] = frame["label"].map({0: "neg", 1: "positive"})
    frame.to_csv(tmp_path / "reviews.csv", index=False)
    data_cfg = DataConfig(label_aliases={"neg": "negative"})
    prepared = prepare_splits(read_dataset("reviews.csv", data_cfg, tmp_path), data_cfg)
    merged = pd.concat([prepared.train, prepared.validation, prepared.test])
    assert merged.groupby("label_name")["label"].unique().map(list).to_dict() == {
        "negative": [0],
        "positive": [1],
    }


def test_unknown_labels_are_refused_when_validation_was_skipped(data_cfg: DataConfig) -> None:
    rows = make_sentiment_rows(100, seed=9)
    rows.loc[3, "label"] = 5
    with pytest.raises(DataError, match=r"unknown labels \['5'\]"):
        prepare_splits(raw_from({"all": rows}), data_cfg)


def test_write_prepared_round_trips_with_stats_and_md5(tmp_path: Path) -> None:
    split = pd.DataFrame(
        {"text": ["a b", "cde", "fg"], "label": [0, 1, 1], "label_name": ["neg", "pos", "pos"]}
    )
    prepared = PreparedData(train=split, validation=split, test=split, labels=["neg", "pos"])
    out = tmp_path / "prepared"
    manifest = write_prepared(prepared, out, source="inline")
    train = manifest["splits"]["train"]
    assert train["rows"] == 3
    assert train["label_counts"] == {"neg": 1, "pos": 2}
    assert train["length_chars"] == {"min": 2, "median": 3.0, "mean": 2.67, "max": 3}
    assert train["md5"] == file_md5(out / "train.parquet")
    loaded = load_prepared(out)
    assert loaded.labels == ["neg", "pos"]
    pd.testing.assert_frame_equal(loaded.test, split)
    again = tmp_path / "again"
    write_prepared(prepared, again, source="inline")
    assert file_md5(again / "train.parquet") == train["md5"]  # byte-identical reruns


def test_failed_write_leaves_the_old_folder_untouched(tmp_path: Path) -> None:
    good = pd.DataFrame({"text": ["x"], "label": [0], "label_name": ["neg"]})
    out = tmp_path / "prepared"
    write_prepared(PreparedData(good, good, good, ["neg", "pos"]), out)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    broken = good.assign(extra=[object()])  # pyarrow cannot store a bare object
    with pytest.raises(pa.ArrowException):
        write_prepared(PreparedData(good, good, broken, ["neg", "pos"]), out)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["prepared"]
