"""A real served Bento for the serving tests, built once per session.

The shared tiny BERT classifier (trained a few steps on separable sentences) is logged with
``log_classifier_model`` into a temporary SQLite MLflow store, registered and given the
``champion`` alias; ``ratchet build`` packages it and ``ratchet serve`` runs it on a free
loopback port. Servers are started once per module and killed in teardown.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

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


def register_champion(model_dir: Path, state: Path) -> str:
    """Log, register and alias the model as champion; returns the registry version."""
    import mlflow
    from mlflow import MlflowClient

    from components.mlflow_model import log_classifier_model

    mlflow.set_tracking_uri(os.environ["MLFLOW_TRACKING_URI"])
    experiment_id = mlflow.create_experiment(
        "ratchet", artifact_location=(state / "mlartifacts").as_uri()
    )
    with mlflow.start_run(experiment_id=experiment_id):
        mlflow.log_metrics({"accuracy": 0.97})
        info = log_classifier_model(model_dir)
    version = mlflow.register_model(info.model_uri, MODEL_NAME)
    client = MlflowClient()
    client.set_registered_model_alias(MODEL_NAME, "champion", version.version)
    for key, value in {**LINEAGE_TAGS, **METRIC_TAGS}.items():
        client.set_model_version_tag(MODEL_NAME, version.version, key, value)
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
