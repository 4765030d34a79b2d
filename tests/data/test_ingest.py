"""Ingest: every supported format, column mapping, label mapping, malformed files."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from components.config import DataConfig
from components.errors import ConfigError, DataError
from components.ingest import (
    class_names,
    label_mapping,
    label_text,
    locate_split_files,
    read_dataset,
    snapshot_source,
)

ROWS = pd.DataFrame({"review": ["good film", "bad film", "fine, really"], "stars": [1, 0, 1]})


def cfg(**changes: object) -> DataConfig:
    base = {"text_column": "review", "label_column": "stars"}
    return DataConfig.model_validate({**base, **changes})


def write(path: Path, kind: str) -> Path:
    if kind == "csv":
        ROWS.to_csv(path, index=False)
    elif kind == "tsv":
        ROWS.to_csv(path, index=False, sep="\t")
    elif kind == "jsonl":
        path.write_text("\n".join(json.dumps(r) for r in ROWS.to_dict("records")) + "\n")
    else:
        ROWS.to_parquet(path, index=False)
    return path


@pytest.mark.parametrize("kind", ["csv", "tsv", "jsonl", "parquet"])
def test_each_format_reads_into_standard_columns(tmp_path: Path, kind: str) -> None:
    path = write(tmp_path / f"reviews.{kind}", kind)
    raw = read_dataset(str(path), cfg(), tmp_path)
    frame = raw.splits["all"]
    assert list(frame.columns) == ["text", "label", "line"]
    assert frame["text"].tolist() == ["good film", "bad film", "fine, really"]
    assert frame["label"].tolist() == ["1", "0", "1"]
    expected_lines = [2, 3, 4] if kind in ("csv", "tsv") else [1, 2, 3]
    assert frame["line"].tolist() == expected_lines


def test_folder_maps_file_stems_to_splits_and_caps_rows(tmp_path: Path) -> None:
    for stem in ("train", "validation", "test"):
        write(tmp_path / f"{stem}.csv", "csv")
    (tmp_path / "README.md").write_text("not data")
    raw = read_dataset(".", cfg(max_rows=2), tmp_path)
    assert raw.row_counts == {"test": 2, "train": 2, "dev": 2}
    assert raw.files["dev"].endswith("validation.csv")


def test_folder_without_train_file_is_an_error(tmp_path: Path) -> None:
    write(tmp_path / "test.csv", "csv")
    write(tmp_path / "dev.csv", "csv")
    with pytest.raises(DataError, match="no train file"):
        locate_split_files(tmp_path)


def test_missing_source_and_unknown_extension(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="data source not found"):
        read_dataset("nope", cfg(), tmp_path)
    (tmp_path / "data.xlsx").write_text("x")
    with pytest.raises(DataError, match="unsupported file type '.xlsx'"):
        read_dataset("data.xlsx", cfg(), tmp_path)


def test_empty_and_header_only_files_are_errors(tmp_path: Path) -> None:
    (tmp_path / "empty.csv").write_bytes(b"")
    with pytest.raises(DataError, match=r"empty\.csv is empty"):
        read_dataset("empty.csv", cfg(), tmp_path)
    (tmp_path / "header.csv").write_text("review,stars\n")
    with pytest.raises(DataError, match="has a header but no data rows"):
        read_dataset("header.csv", cfg(), tmp_path)


def test_ragged_csv_row_names_file_and_line(tmp_path: Path) -> None:
    (tmp_path / "ragged.csv").write_text("review,stars\ngood,1\nbad,0,extra\n")
    with pytest.raises(DataError, match=r"ragged\.csv line 3: 3 fields where the header has 2"):
        read_dataset("ragged.csv", cfg(), tmp_path)


def test_invalid_utf8_names_file_and_line(tmp_path: Path) -> None:
    (tmp_path / "latin1.csv").write_bytes(b"review,stars\ngood,1\ncaf\xe9 bad,0\n")
    with pytest.raises(DataError, match=r"latin1\.csv line 3: invalid UTF-8 bytes b'\\xe9'"):
        read_dataset("latin1.csv", cfg(), tmp_path)


def test_bad_jsonl_line_is_named(tmp_path: Path) -> None:
    (tmp_path / "rows.jsonl").write_text('{"review": "ok", "stars": 1}\n{not json}\n')
    with pytest.raises(DataError, match=r"rows\.jsonl line 2: not valid JSON"):
        read_dataset("rows.jsonl", cfg(), tmp_path)


def test_missing_columns_are_left_for_validation_but_slices_must_exist(tmp_path: Path) -> None:
    write(tmp_path / "r.csv", "csv")
    raw = read_dataset("r.csv", cfg(text_column="body"), tmp_path)
    assert "text" not in raw.splits["all"]
    assert raw.splits["all"].attrs["columns"] == ["review", "stars"]
    with pytest.raises(ConfigError, match=r"data.slice_columns \['genre'\] not in"):
        read_dataset("r.csv", cfg(slice_columns=["genre"]), tmp_path)


def test_label_text_normalises_numbers() -> None:
    assert [label_text(v) for v in (1, 1.0, " pos ", None, float("nan"))] == [
        "1",
        "1",
        "pos",
        None,
        None,
    ]


def test_label_mapping_by_index_name_and_alias() -> None:
    data = cfg(labels=["negative", "positive"], label_aliases={"pos": "positive"})
    mapping = label_mapping(data, ["0", "pos"])
    assert mapping == {"0": 0, "1": 1, "negative": 0, "positive": 1, "pos": 1}
    with pytest.raises(ConfigError, match="unknown class 'great'"):
        label_mapping(cfg(label_aliases={"x": "great"}), [])


def test_inferred_labels_sort_numerically_or_by_name() -> None:
    assert class_names(cfg(labels=None), ["10", "2", None, "2"]) == ["2", "10"]
    assert class_names(cfg(labels=None), ["pos", "neg"]) == ["neg", "pos"]


def test_snapshot_copies_data_files_byte_for_byte(tmp_path: Path) -> None:
    source = tmp_path / "src"
    source.mkdir()
    train = write(source / "train.csv", "csv")
    (source / "notes.txt").write_text("ignored")
    raw_dir = tmp_path / "data" / "raw"
    files = snapshot_source("src", tmp_path, raw_dir)
    assert files == [Path("train.csv")]
    assert (raw_dir / "train.csv").read_bytes() == train.read_bytes()
