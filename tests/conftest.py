"""Shared fixtures: a tiny random BERT, a separable sentiment data set, an isolated state folder.

Everything here is local and small so the whole suite runs in minutes on 2 CPU cores.
"""

from __future__ import annotations

import os
import random
from pathlib import Path

import pandas as pd
import pytest

from components.base_model import shipped_model_dir
from components.config import RatchetConfig, load_config
from components.state import QUIET_ENVIRONMENT

PROJECT_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = PROJECT_ROOT.parent / "shared" / "data"

for _name, _value in QUIET_ENVIRONMENT.items():
    os.environ.setdefault(_name, _value)
os.environ.setdefault("RATCHET_NO_PROGRESS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

POSITIVE_WORDS = ["great", "wonderful", "superb", "delightful", "brilliant", "moving", "fun"]
NEGATIVE_WORDS = ["awful", "terrible", "boring", "dreadful", "dull", "painful", "bad"]
SUBJECTS = ["the movie", "this film", "the plot", "the acting", "the script", "the ending"]


def make_sentiment_rows(count: int, seed: int = 0) -> pd.DataFrame:
    """A separable two-class data set: each text carries one clearly polar word."""
    rng = random.Random(seed)
    rows = []
    for index in range(count):
        label = index % 2
        word = rng.choice(POSITIVE_WORDS if label else NEGATIVE_WORDS)
        subject = rng.choice(SUBJECTS)
        rows.append({"sentence": f"{subject} was {word} number {index}", "label": label})
    return pd.DataFrame(rows)


@pytest.fixture(scope="session")
def tiny_bert_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random 2-layer BERT (hidden 32) with MiniLM's real tokenizer, saved as an HF folder."""
    from transformers import AutoTokenizer, BertConfig, BertForMaskedLM

    folder = tmp_path_factory.mktemp("tiny-bert")
    tokenizer = AutoTokenizer.from_pretrained(str(shipped_model_dir()))
    config = BertConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=128,
    )
    import torch

    torch.manual_seed(0)
    BertForMaskedLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture
def state_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An isolated RATCHET_HOME; MLflow points at a SQLite file inside it."""
    home = tmp_path / "state"
    home.mkdir()
    monkeypatch.setenv("RATCHET_HOME", str(home))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{home / 'mlflow.db'}")
    return home


@pytest.fixture
def tiny_config(tiny_bert_dir: Path) -> RatchetConfig:
    """The project's params.yaml with the smoke profile and the tiny BERT as base model."""
    return load_config(
        PROJECT_ROOT / "params.yaml",
        [PROJECT_ROOT / "configs" / "smoke.yaml"],
        [f"model.base={tiny_bert_dir}"],
    )


@pytest.fixture
def sst2_dir() -> Path:
    folder = SHARED_DATA / "sst2"
    if not (folder / "train.tsv").is_file():
        pytest.skip(f"SST-2 not found at {folder} (../shared/data beside the checkout)")
    return folder
