"""Prepare validated data into the frozen train/validation/test splits every later stage reads.

    ratchet prepare            # validate, split, write data/prepared (the DVC stage `prepare`)

Output: ``data/prepared/{train,validation,test}.parquet`` (columns ``text``, ``label`` as
class id, ``label_name``, plus slice columns) and ``manifest.json`` (class names, and per
split the row count, label distribution, length stats and the file's DVC md5).

Splits are assigned by a salted hash of the normalised text, so a row's split never
changes when rows are appended, duplicates always land together, and the result is the
same on every machine. A data set's own labelled test split is kept as ``test``; a
``dev`` split becomes ``test`` when there is no labelled test (SST-2), and validation is
carved from train. The folder is replaced atomically: a failed run leaves it as it was.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from components.config import DataConfig
from components.errors import DataError
from components.feedback_data import add_feedback, read_feedback_dataset
from components.files import atomic_dir
from components.ingest import (
    RawDataset,
    class_names,
    label_mapping,
    read_dataset,
)
from components.state import ProjectPaths
from components.validate import normalise_text, validate_dataset
from components.versioning import file_md5

logger = logging.getLogger(__name__)

SPLIT_NAMES = ("train", "validation", "test")
MANIFEST_FILE = "manifest.json"


@dataclass(frozen=True)
class PreparedData:
    """The three prepared splits and the class names in id order."""

    train: pd.DataFrame
    validation: pd.DataFrame
    test: pd.DataFrame
    labels: list[str]
    feedback_rows: int = 0  # rows of data/feedback added to train

    def split(self, name: str) -> pd.DataFrame:
        return {"train": self.train, "validation": self.validation, "test": self.test}[name]


def load_prepared(prepared_dir: Path) -> PreparedData:
    """Read the prepared splits written by the prepare stage.

    Raises:
        DataError: the folder or one of its files is missing (run the prepare stage first).
    """
    manifest_path = prepared_dir / MANIFEST_FILE
    if not manifest_path.is_file():
        raise DataError(
            f"no prepared data at {prepared_dir}: run `ratchet prepare` (or `dvc repro prepare`)"
        )
    manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    frames = {}
    for name in SPLIT_NAMES:
        split_path = prepared_dir / f"{name}.parquet"
        if not split_path.is_file():
            raise DataError(f"prepared split missing: {split_path}")
        frames[name] = pd.read_parquet(split_path)
    return PreparedData(labels=list(manifest["labels"]), **frames)


def hash_unit(text: str, seed: int) -> float:
    """A uniform number in [0, 1) from the seed and the normalised text."""
    digest = hashlib.sha256(f"{seed}\x00{normalise_text(text)}".encode()).hexdigest()
    return int(digest[:15], 16) / 16**15


def assign_splits(
    texts: pd.Series, seed: int, validation_fraction: float, test_fraction: float = 0.0
) -> pd.Series:
    """Assign each text to ``train``, ``validation`` or ``test`` by hash threshold.

    Each row is placed by its own hash alone, so appending rows never moves an existing
    row, and every class is split in the same proportions (stratified in expectation;
    exact per-class counts would need ranks, which shift when rows are added).

    Args:
        texts: the texts to place.
        seed: salt of the hash (``data.split.seed``); another seed gives another split.
        validation_fraction: share placed in ``validation``.
        test_fraction: share placed in ``test`` (0 when the data set has its own test).

    Returns:
        Split names, aligned with ``texts``.
    """
    units = texts.map(lambda text: hash_unit(text, seed))
    names = pd.Series("train", index=texts.index, dtype=object)
    names[units < test_fraction + validation_fraction] = "validation"
    names[units < test_fraction] = "test"
    return names


def encode_labels(frame: pd.DataFrame, labels: list[str], mapping: dict[str, int]) -> pd.DataFrame:
    """Standard prepared columns: stripped ``text``, ``label`` id, ``label_name``, slices."""
    unknown = sorted(set(frame["label"].dropna()) - set(mapping))
    if unknown or frame["label"].isna().any() or frame["text"].isna().any():
        raise DataError(f"cannot prepare rows with null texts/labels or unknown labels {unknown}")
    ids = frame["label"].map(mapping).astype("int64")
    prepared = pd.DataFrame(
        {
            "text": frame["text"].str.strip(),
            "label": ids,
            "label_name": ids.map(lambda index: labels[index]),
        }
    )
    slices = [c for c in frame.columns if c not in {"text", "label", "line"}]
    return pd.concat([prepared, frame[slices]], axis=1).reset_index(drop=True)


def drop_duplicate_rows(frame: pd.DataFrame) -> pd.DataFrame:
    """Keep the first of rows with the same normalised text and label."""
    keys = frame["text"].map(normalise_text) + "\x00" + frame["label"].astype(str)
    return frame[~keys.duplicated(keep="first")].reset_index(drop=True)


def split_frames(raw: RawDataset, data_cfg: DataConfig) -> dict[str, pd.DataFrame]:
    """Raw splits -> train/validation/test frames (raw columns), by the rules in the header."""
    split_cfg = data_cfg.split
    if "all" in raw.splits:
        pool, test = raw.splits["all"], None
    else:
        pool = raw.splits["train"]
        test = raw.splits.get("test", raw.splits.get("dev"))
    if test is not None and "test" in raw.splits and "dev" in raw.splits:
        return {"train": pool, "validation": raw.splits["dev"], "test": test}
    fraction = 0.0 if test is not None else split_cfg.test_fraction
    names = assign_splits(pool["text"], split_cfg.seed, split_cfg.validation_fraction, fraction)
    frames = {name: pool[names == name] for name in SPLIT_NAMES}
    if test is not None:
        frames["test"] = test
    return frames


def prepare_splits(
    raw: RawDataset, data_cfg: DataConfig, feedback: pd.DataFrame | None = None
) -> PreparedData:
    """Turn validated raw data into the prepared splits (pure; nothing is written);
    ``feedback`` rows (``data/feedback``) join the train split only.

    Raises:
        DataError: a split would be empty, or rows have null/unknown labels (validate first).
    """
    raw_labels = [v for frame in raw.splits.values() for v in frame["label"].tolist()]
    labels = class_names(data_cfg, raw_labels)
    mapping = label_mapping(data_cfg, raw_labels)
    frames = {}
    for name, frame in split_frames(raw, data_cfg).items():
        frames[name] = drop_duplicate_rows(encode_labels(frame, labels, mapping))
        if frames[name].empty:
            raise DataError(f"the {name} split is empty: {raw.source} has too few rows")
    held_out = [frames["validation"], frames["test"]]
    frames["train"], added = add_feedback(frames["train"], held_out, feedback, data_cfg, labels)
    return PreparedData(labels=labels, feedback_rows=added, **frames)


def split_stats(frame: pd.DataFrame, labels: list[str]) -> dict[str, Any]:
    """Row count, label distribution and text length stats (characters and words)."""
    counts = frame["label_name"].value_counts()
    chars = frame["text"].str.len()
    words = frame["text"].str.split().str.len()
    return {
        "rows": len(frame),
        "label_counts": {name: int(counts.get(name, 0)) for name in labels},
        "label_shares": {name: round(int(counts.get(name, 0)) / len(frame), 4) for name in labels},
        "length_chars": {
            "min": int(chars.min()),
            "median": float(chars.median()),
            "mean": round(float(chars.mean()), 2),
            "max": int(chars.max()),
        },
        "length_words_mean": round(float(words.mean()), 2),
    }


def write_prepared(prepared: PreparedData, out_dir: Path, source: str = "") -> dict[str, Any]:
    """Write the splits and manifest; replace ``out_dir`` atomically.

    Files are written to a temporary sibling folder that is renamed into place only when
    complete, so a failure leaves ``out_dir`` as it was.

    Returns:
        The manifest: labels, source and per split its stats and ``md5`` (DVC's file md5).
    """
    manifest: dict[str, Any] = {
        "labels": prepared.labels,
        "source": source,
        "feedback_rows": prepared.feedback_rows,
        "splits": {},
    }
    with atomic_dir(out_dir) as staging:
        for name in SPLIT_NAMES:
            path = staging / f"{name}.parquet"
            prepared.split(name).to_parquet(path, index=False)
            stats = split_stats(prepared.split(name), prepared.labels)
            manifest["splits"][name] = {**stats, "md5": file_md5(path)}
        manifest_text = json.dumps(manifest, indent=2) + "\n"
        (staging / MANIFEST_FILE).write_text(manifest_text, encoding="utf-8")
    return manifest


def run_prepare(
    source: str, data_cfg: DataConfig, paths: ProjectPaths, validate: bool = True
) -> dict[str, Any]:
    """Read ``source``, validate it (unless told not to), write ``data/prepared``.

    Args:
        source: a file, folder or ``hf:`` source (relative to the project root).
        data_cfg: the ``data`` section.
        paths: project paths (``prepared_dir``, ``data_docs_dir``).
        validate: run the GE suite first; the DVC stage skips it because its ``validate``
            stage already gated the same bytes.

    Returns:
        The manifest written beside the splits.

    Raises:
        DataValidationError: the data failed validation; ``data/prepared`` is untouched.
    """
    raw = read_dataset(source, data_cfg, paths.model_root)
    if validate:
        validate_dataset(raw, data_cfg, paths.data_docs_dir)
    feedback = read_feedback_dataset(paths.model_root)
    prepared = prepare_splits(raw, data_cfg, feedback)
    manifest = write_prepared(prepared, paths.prepared_dir, source)
    rows = {name: split["rows"] for name, split in manifest["splits"].items()}
    logger.info("prepared %s into %s: %s", source, paths.prepared_dir, rows)
    return manifest
