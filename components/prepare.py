"""Prepare validated data into the frozen train/validation/test splits every later stage reads.

Output: ``data/prepared/{train,validation,test}.parquet`` (columns ``text``, ``label`` as
class id, ``label_name``, plus slice columns) and ``manifest.json`` (class names, stats).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from components.errors import DataError

SPLIT_NAMES = ("train", "validation", "test")
MANIFEST_FILE = "manifest.json"


@dataclass(frozen=True)
class PreparedData:
    """The three prepared splits and the class names in id order."""

    train: pd.DataFrame
    validation: pd.DataFrame
    test: pd.DataFrame
    labels: list[str]

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
