"""Shared fixtures: a tiny random BERT, a separable sentiment data set, an isolated state folder.

Everything here is local and small so the whole suite runs in minutes on 2 CPU cores.
"""

from __future__ import annotations

import os
import random
import sys
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest

from components.base_model import shipped_model_dir
from components.config import RatchetConfig, load_config, read_yaml_mapping, set_dotted
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


@pytest.fixture(autouse=True)
def restore_environment() -> Iterator[None]:
    """Entry points export variables (configure_environment) and set MLflow's global
    tracking URI (which beats the variable); keep each test's to itself."""
    saved = dict(os.environ)
    yield
    if "mlflow" in sys.modules:
        sys.modules["mlflow"].set_tracking_uri(None)
    os.environ.clear()
    os.environ.update(saved)


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


def running_in_ci() -> bool:
    """True under a CI runner (GitHub Actions, GitLab and most others set ``CI=true``)."""
    return os.environ.get("CI", "").strip().lower() in {"true", "1", "yes"}


def require_sst2(folder: Path) -> Path:
    """``folder`` when it holds SST-2; else skip locally, but fail under CI, where a
    missing data folder must not pass as a green run."""
    if (folder / "train.tsv").is_file():
        return folder
    message = f"SST-2 not found at {folder} (../shared/data beside the checkout)"
    if running_in_ci():
        pytest.fail(f"{message}: CI must provide it, the SST-2 tests cannot run", pytrace=False)
    pytest.skip(message)


@pytest.fixture
def sst2_dir() -> Path:
    return require_sst2(SHARED_DATA / "sst2")


def prepared_split(count: int, seed: int = 0) -> pd.DataFrame:
    """``make_sentiment_rows`` in the prepared-data layout (text, label id, label_name)."""
    rows = make_sentiment_rows(count, seed).rename(columns={"sentence": "text"})
    rows["label"] = rows["label"].astype("int64")
    rows["label_name"] = rows["label"].map({0: "negative", 1: "positive"})
    return rows


def train_tiny_classifier(
    base_dir: Path,
    output_dir: Path,
    shuffle_labels: bool = False,
    steps: int = 40,
    pooling: str = "cls",
    train: pd.DataFrame | None = None,
    train_word_embeddings: bool = False,
) -> Path:
    """A tiny BERT sequence classifier trained with a few plain AdamW steps (about a second).

    With ``shuffle_labels`` the labels are permuted first, which makes a worse model;
    ``pooling="mean"`` builds Ratchet's mean-pooling head instead of BERT's [CLS] pooler.
    ``train`` (``text`` and ``label`` 0/1 columns) replaces the default polar-word sentences;
    ``train_word_embeddings`` also trains the word embeddings (a wider vocabulary).
    """
    import torch
    from transformers import AutoTokenizer

    from components.modeling import classifier_from_pretrained

    torch.manual_seed(0)
    labels = ["negative", "positive"]
    model = classifier_from_pretrained(
        str(base_dir),
        pooling,
        num_labels=2,
        id2label=dict(enumerate(labels)),
        label2id={name: i for i, name in enumerate(labels)},
    )
    tokenizer = AutoTokenizer.from_pretrained(str(base_dir))
    if train is None:
        train = prepared_split(160, seed=1)
    train = train.reset_index(drop=True)
    targets = train["label"].to_numpy()
    if shuffle_labels:
        targets = random.Random(7).sample(list(targets), len(targets))
    # Frozen word embeddings: most of the parameters, and not needed to separate the words.
    model.bert.embeddings.word_embeddings.weight.requires_grad_(train_word_embeddings)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=3e-3)
    model.train()
    for step in range(steps):
        chosen = [(step * 16 + i) % len(train) for i in range(16)]
        batch = tokenizer([train["text"][i] for i in chosen], padding=True, return_tensors="pt")
        loss = model(**batch, labels=torch.tensor([int(targets[i]) for i in chosen])).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.eval()
    model.save_pretrained(output_dir)
    tokenizer.save_pretrained(output_dir)
    return output_dir


@pytest.fixture(scope="session")
def tiny_classifiers(tiny_bert_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Two tiny classifiers: ``good`` (learns the polar words) and ``shuffled`` (random labels)."""
    root = tmp_path_factory.mktemp("tiny-classifiers")
    return {
        "good": train_tiny_classifier(tiny_bert_dir, root / "good"),
        "shuffled": train_tiny_classifier(tiny_bert_dir, root / "shuffled", shuffle_labels=True),
    }


@pytest.fixture(scope="session")
def tiny_mean_classifier(tiny_bert_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Like ``tiny_classifiers["good"]``, with the mean-pooling head (``model.pooling: mean``)."""
    return train_tiny_classifier(
        tiny_bert_dir, tmp_path_factory.mktemp("tiny-mean") / "good", pooling="mean"
    )


def add_model_folder(project: Path, name: str, params: Path, **changes: object) -> Path:
    """``project/pipelines/<name>/`` holding ``params`` with ``changes`` (dotted keys with
    ``__`` for dots, e.g. ``data__source``) and the model folder's generated dvc.yaml."""
    import yaml

    from components.pipeline import render_dvc_yaml

    folder = project / "pipelines" / name
    folder.mkdir(parents=True)
    mapping = read_yaml_mapping(params)
    for key, value in changes.items():
        set_dotted(mapping, key.split("__"), value)
    (folder / "params.yaml").write_text(yaml.safe_dump(mapping, sort_keys=False))
    (folder / "dvc.yaml").write_text(render_dvc_yaml(code_root="../.."))
    return folder
