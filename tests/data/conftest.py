"""Small data sets written inline for the data tests."""

from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd
import pytest

from components.config import DataConfig, RatchetConfig, load_config
from tests.conftest import PROJECT_ROOT, make_sentiment_rows


def write_tsv(path: Path, frame: pd.DataFrame) -> Path:
    """GLUE-style TSV (header `sentence<TAB>label`), like SST-2."""
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = ["sentence\tlabel"] + [f"{row.sentence}\t{row.label}" for row in frame.itertuples()]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.fixture
def data_cfg() -> DataConfig:
    return load_config(PROJECT_ROOT / "params.yaml").data


@pytest.fixture
def project(tmp_path: Path, state_dir: Path) -> Path:
    """A project folder with the real params.yaml; RATCHET_HOME is isolated."""
    root = tmp_path / "project"
    root.mkdir()
    shutil.copy(PROJECT_ROOT / "params.yaml", root / "params.yaml")
    return root


@pytest.fixture
def good_folder(tmp_path: Path) -> Path:
    """train.tsv (120 rows) + dev.tsv (30 rows), no shared texts: passes the default suite."""
    rows = make_sentiment_rows(150, seed=1)
    folder = tmp_path / "good"
    write_tsv(folder / "train.tsv", rows.iloc[:120])
    write_tsv(folder / "dev.tsv", rows.iloc[120:])
    return folder


@pytest.fixture
def config() -> RatchetConfig:
    return load_config(PROJECT_ROOT / "params.yaml")
