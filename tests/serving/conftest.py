"""A real served Bento for the serving tests, built once per session.

The shared tiny BERT classifier (trained a few steps on separable sentences) is logged with
``log_classifier_model`` into a temporary SQLite MLflow store, registered and given the
``champion`` alias; ``ratchet build`` packages it and ``ratchet serve`` runs it on a free
loopback port. Servers are started once per module and killed in teardown.

A tiny token classifier (``tiny_tagger_dir``, trained a few steps on toy sentences with
PER and LOC names) is evaluated with ``components/token_evaluate.py``, logged and
registered as ``ratchet-conll`` tagged ``task=token-classification`` in the SAME state
folder (MLflow store and BentoML home) as the classifier, and ``ratchet build`` packages
it as the tagger Bento (``built_tagger``). Shortcut, kept here: the registry's
``register_challenger`` needs a classification report (model card, behaviour checks), so
the fixture registers with ``mlflow.register_model`` and sets the tags the registry sets.
"""

from __future__ import annotations

import os
import random
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import PROJECT_ROOT, train_tiny_classifier

MODEL_NAME = "ratchet-sst2"
# Tags as the registry sets them (components/registry.py): lineage plus metric.<name>.
LINEAGE_TAGS = {"prepared_data_md5": "0123456789abcdef0123456789abcdef", "git_commit": "abc1234"}
METRIC_TAGS = {"metric.f1_macro": "0.96"}
# `ratchet`, run by the interpreter running the tests.
RATCHET = [sys.executable, "-c", "from cli.main import main; main()"]
STARTUP_TIMEOUT_S = 120


def register_champion(
    model_dir: Path,
    state: Path,
    model_name: str = MODEL_NAME,
    tags: dict[str, str] | None = None,
    evaluation: Any = None,
) -> str:
    """Log, register and alias the model as champion; returns the registry version.

    Args:
        tags: version tags (default: the classifier's lineage and metric tags).
        evaluation: a report logged under the run's ``evaluation/`` (as the registry does).
    """
    import mlflow
    from mlflow import MlflowClient

    from components import tracking
    from components.mlflow_model import log_classifier_model

    mlflow.set_tracking_uri(os.environ["MLFLOW_TRACKING_URI"])
    experiment = mlflow.get_experiment_by_name("ratchet")
    experiment_id = (
        experiment.experiment_id
        if experiment is not None
        else mlflow.create_experiment("ratchet", artifact_location=(state / "mlartifacts").as_uri())
    )
    with mlflow.start_run(experiment_id=experiment_id) as run:
        mlflow.log_metrics({"accuracy": 0.97} if evaluation is None else evaluation.metrics)
        info = log_classifier_model(model_dir)
    if evaluation is not None:
        tracking.log_evaluation(run.info.run_id, evaluation)
    version = mlflow.register_model(info.model_uri, model_name)
    client = MlflowClient()
    client.set_registered_model_alias(model_name, "champion", version.version)
    for key, value in (tags or {**LINEAGE_TAGS, **METRIC_TAGS}).items():
        client.set_model_version_tag(model_name, version.version, key, value)
    return str(version.version)


def run_ratchet(
    *args: str, env: dict[str, str], cwd: Path = PROJECT_ROOT
) -> subprocess.CompletedProcess[str]:
    """`ratchet ARGS` in a subprocess, as a user would run it (output captured)."""
    return subprocess.run(
        [*RATCHET, *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=300
    )


@dataclass(frozen=True)
class BuiltBento:
    tag: str
    registry_version: str
    env: dict[str, str]
    model_dir: Path  # the registered model's folder, to compare served answers in-process


@pytest.fixture(scope="session")
def built_bento(
    tiny_bert_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[BuiltBento]:
    """Registry champion -> `ratchet build` in an isolated state folder."""
    state = tmp_path_factory.mktemp("serving-state")
    env = {
        **os.environ,
        "RATCHET_HOME": str(state),
        "MLFLOW_TRACKING_URI": f"sqlite:///{state / 'mlflow.db'}",
        "BENTOML_HOME": str(state / "bentoml"),
    }
    patch = pytest.MonkeyPatch()
    patch.setenv("MLFLOW_TRACKING_URI", env["MLFLOW_TRACKING_URI"])
    try:
        model_dir = train_tiny_classifier(tiny_bert_dir, state / "tiny-classifier")
        version = register_champion(model_dir, state)
    finally:
        patch.undo()
    # A subprocess, as a user would run it: BentoML reads BENTOML_HOME once at import.
    params = str(PROJECT_ROOT / "params.yaml")
    # Registered without an evaluation: torch needs no parity proof (the exported
    # runtimes are built in tests/flows/test_runtime_release.py).
    result = run_ratchet(
        "build",
        "--alias",
        "champion",
        "--params",
        params,
        "--set",
        "serving.runtime=torch",
        env=env,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    tag = result.stdout.strip().splitlines()[-1]
    yield BuiltBento(tag=tag, registry_version=version, env=env, model_dir=model_dir)


TAGGER_NAME = "ratchet-conll"
TAGGER_TAGS = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]
FIRST_NAMES = ["Anna", "Farid", "Zoë", "Hiro", "Greta", "Boris", "Ines", "Jonas"]
LAST_NAMES = ["Smith", "Ñúñez", "Okafor", "Müller", "Tanaka", "Silva"]
CITIES = ["Paris", "Quito", "São Paulo", "Zürich", "Kyiv", "Lima", "Cairo", "New Delhi"]
TEMPLATES = [
    "{person} flew to {city} .",
    "In {city} , {person} met friends .",
    "{person} said {city} was cold .",
    "They visited {city} with {person} .",
    "It rained all day .",
]


def toy_tagged_sentence(rng: random.Random) -> tuple[list[str], list[str]]:
    """Words and IOB2 tags of one toy sentence: a PER and a LOC in one of a few frames."""
    fillers = {
        "{person}": ("PER", f"{rng.choice(FIRST_NAMES)} {rng.choice(LAST_NAMES)}".split()),
        "{city}": ("LOC", rng.choice(CITIES).split()),
    }
    words, tags = [], []
    for part in rng.choice(TEMPLATES).split():
        kind, names = fillers.get(part, ("", [part]))
        words += names
        tags += [f"B-{kind}"] + [f"I-{kind}"] * (len(names) - 1) if kind else ["O"]
    return words, tags


def train_tiny_tagger(base_dir: Path, output_dir: Path, steps: int = 80) -> Path:
    """A tiny BERT token classifier fitted with plain AdamW steps on toy sentences (seconds);
    tags at each word's first sub-token, as ``components/token_finetune.py`` aligns them."""
    import torch
    from transformers import AutoModelForTokenClassification, AutoTokenizer

    from components.token_inference import first_sub_tokens

    torch.manual_seed(0)
    rng = random.Random(0)
    sentences = [toy_tagged_sentence(rng) for _ in range(200)]
    tokenizer = AutoTokenizer.from_pretrained(str(base_dir))
    model = AutoModelForTokenClassification.from_pretrained(
        str(base_dir),
        num_labels=len(TAGGER_TAGS),
        id2label=dict(enumerate(TAGGER_TAGS)),
        label2id={tag: index for index, tag in enumerate(TAGGER_TAGS)},
    )
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    for step in range(steps):
        batch = [sentences[(step * 16 + i) % len(sentences)] for i in range(16)]
        encoded = tokenizer(
            [words for words, _ in batch],
            is_split_into_words=True,
            padding=True,
            return_tensors="pt",
        )
        labels = torch.full_like(encoded["input_ids"], -100)
        for row, (_, tags) in enumerate(batch):
            for position, word in first_sub_tokens(encoded.word_ids(row)):
                labels[row, position] = TAGGER_TAGS.index(tags[word])
        model(**encoded, labels=labels).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.eval()
    model.save_pretrained(output_dir)
    tokenizer.save_pretrained(output_dir)
    return output_dir


@pytest.fixture(scope="session")
def tiny_tagger_dir(tiny_bert_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return train_tiny_tagger(tiny_bert_dir, tmp_path_factory.mktemp("tiny-tagger") / "model")


def evaluate_tiny_tagger(model_dir: Path, output_dir: Path) -> Any:
    """The tagger's evaluation on 20 fresh toy sentences (components/token_evaluate.py)."""
    import pandas as pd

    from components.config import EvalConfig
    from components.token_evaluate import evaluate_token_model

    rng = random.Random(1)
    rows = [toy_tagged_sentence(rng) for _ in range(20)]
    test = pd.DataFrame({"tokens": [w for w, _ in rows], "tags": [t for _, t in rows]})
    settings = EvalConfig(latency_samples=2)
    return evaluate_token_model(model_dir, test, TAGGER_TAGS, settings, output_dir)


@pytest.fixture(scope="session")
def built_tagger(built_bento: BuiltBento, tiny_tagger_dir: Path) -> BuiltBento:
    """The tagger registered beside the classifier (same state) and built by `ratchet build`
    with the default ``serving.runtime`` (onnx-int8: a tagger falls back to torch)."""
    state = Path(built_bento.env["RATCHET_HOME"])
    patch = pytest.MonkeyPatch()
    patch.setenv("MLFLOW_TRACKING_URI", built_bento.env["MLFLOW_TRACKING_URI"])
    try:
        report = evaluate_tiny_tagger(tiny_tagger_dir, state / "tagger-evaluation")
        tags = {
            "task": "token-classification",
            "metric.f1": f"{report.metrics['f1']:.6g}",
            "test_split_md5": report.test_split_md5,
            **LINEAGE_TAGS,
        }
        version = register_champion(tiny_tagger_dir, state, TAGGER_NAME, tags, report)
    finally:
        patch.undo()
    result = run_ratchet(
        "build",
        "--params",
        str(PROJECT_ROOT / "params.yaml"),
        "--set",
        f"registry.model_name={TAGGER_NAME}",
        env=built_bento.env,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    tag = result.stdout.strip().splitlines()[-1]
    return BuiltBento(
        tag=tag, registry_version=version, env=built_bento.env, model_dir=tiny_tagger_dir
    )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass(frozen=True)
class RunningServer:
    url: str
    process: subprocess.Popen[bytes]


def start_server(bento: BuiltBento, api_key: str | None = None) -> RunningServer:
    """`ratchet serve` on a free port, waited on until /readyz answers 200."""
    port = free_port()
    env = dict(bento.env)
    env.pop("RATCHET_API_KEY", None)
    if api_key:
        env["RATCHET_API_KEY"] = api_key
    log_path = Path(env["RATCHET_HOME"]) / f"serve-{port}.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [*RATCHET, "serve", "--bento", bento.tag, "--port", str(port)],
            env=env,
            cwd=PROJECT_ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    url = f"http://127.0.0.1:{port}"
    headers = {"X-API-Key": api_key} if api_key else {}
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None or b"startup failed" in log_path.read_bytes():
            stop_server(process)
            log_tail = log_path.read_text(errors="replace")[-3000:]
            raise RuntimeError(f"bentoml serve exited with {process.returncode}:\n{log_tail}")
        try:
            if httpx.get(f"{url}/readyz", headers=headers, timeout=2).status_code == 200:
                return RunningServer(url=url, process=process)
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    stop_server(process)
    raise RuntimeError(f"server on port {port} not ready after {STARTUP_TIMEOUT_S}s")


def stop_server(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM the server's process group (bentoml serve and its workers), then SIGKILL."""
    if process.poll() is not None:
        return
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=5)
