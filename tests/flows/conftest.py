"""A throw-away Ratchet project (git + DVC) with a small data set, for end-to-end flow tests."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from components.config import deep_merge, read_yaml_mapping
from tests.conftest import PROJECT_ROOT, make_sentiment_rows

PROJECT_FILES = [
    "params.yaml",
    "dvc.yaml",
    "prefect.yaml",
    "pyproject.toml",
    "constraints.txt",
    ".dvc/config",
    ".dvc/.gitignore",
]
# dvc.yaml names the component sources as stage dependencies, as in a real clone.
PROJECT_FOLDERS = ["configs", "components", "flows", "serving"]
CACHES = shutil.ignore_patterns("__pycache__")


def write_tsv(path: Path, rows: list[tuple[str, int]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = ["sentence\tlabel"] + [f"{text}\t{label}" for text, label in rows]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def git(root: Path, *args: str) -> None:
    subprocess.run(["git", *args], cwd=root, check=True, capture_output=True)


def make_project(root: Path, data_source: Path) -> Path:
    """A git repo with the project's configuration; params.yaml carries the smoke profile
    and ``data_source``, since DVC reads the data settings from params.yaml alone."""
    for name in PROJECT_FILES:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(PROJECT_ROOT / name, root / name)
    params = deep_merge(
        read_yaml_mapping(PROJECT_ROOT / "params.yaml"),
        read_yaml_mapping(PROJECT_ROOT / "configs" / "smoke.yaml"),
    )
    params["data"]["source"] = str(data_source)
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    for name in PROJECT_FOLDERS:
        shutil.copytree(PROJECT_ROOT / name, root / name, ignore=CACHES)
    (root / ".gitignore").write_text(".ratchet/\nmodels/\nmetrics/\n")
    git(root, "init", "-q")
    git(root, "-c", "user.email=t@example.com", "-c", "user.name=t", "add", "-A")
    git(root, "-c", "user.email=t@example.com", "-c", "user.name=t", "commit", "-qm", "init")
    return root


@pytest.fixture
def sentiment_source(tmp_path: Path) -> Path:
    """train.tsv (160 rows) and dev.tsv (40 rows) of a separable task, outside the project."""
    frame = make_sentiment_rows(200, seed=3)
    rows = list(zip(frame["sentence"], frame["label"], strict=True))
    folder = tmp_path / "source"
    write_tsv(folder / "train.tsv", rows[:160])
    write_tsv(folder / "dev.tsv", rows[160:])
    return folder


@pytest.fixture
def flow_project(tmp_path: Path, state_dir: Path, sentiment_source: Path) -> Iterator[Path]:
    yield make_project(tmp_path / "project", sentiment_source)


def flow_overrides(tiny_bert_dir: Path, **extra: str) -> list[str]:
    """Smoke-sized settings: tiny BERT, no extra corpora."""
    overrides = {
        "model.base": str(tiny_bert_dir),
        "pretrain.extra_corpora": "[]",
        "eval.latency_samples": "3",
        **extra,
    }
    return [f"{key}={value}" for key, value in overrides.items()]
