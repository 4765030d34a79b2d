"""The registry flow over HTTP against a real ``mlflow server`` on a free loopback port."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import mlflow
import pytest

from components import registry, tracking
from components.config import EvalConfig, RatchetConfig
from components.evaluate import evaluate_model
from components.mlflow_model import log_classifier_model
from components.promotion import apply_gate
from components.state import ProjectPaths
from tests.conftest import PROJECT_ROOT, prepared_split

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def mlflow_server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """``mlflow server`` with a SQLite backend and proxied artifacts; yields its URL."""
    port = free_port()
    command = [
        str(Path(sys.executable).parent / "mlflow"),
        "server",
        "--backend-store-uri",
        f"sqlite:///{tmp_path / 'server.db'}",
        "--artifacts-destination",
        str(tmp_path / "server-artifacts"),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        "1",
    ]
    log = (tmp_path / "server.log").open("w")
    server = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            assert server.poll() is None, (tmp_path / "server.log").read_text()
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.5)
        else:
            pytest.fail(f"mlflow server did not start: {(tmp_path / 'server.log').read_text()}")
        monkeypatch.setenv("MLFLOW_TRACKING_URI", url)
        monkeypatch.setenv("RATCHET_HOME", str(tmp_path / "state"))
        yield url
    finally:
        server.terminate()
        server.wait(timeout=30)
        log.close()


def test_register_gate_and_load_champion_over_http(
    mlflow_server: str,
    tiny_config: RatchetConfig,
    tiny_classifiers: dict[str, Path],
    tmp_path: Path,
) -> None:
    paths = ProjectPaths.discover(PROJECT_ROOT)
    tracking.setup_tracking(tiny_config, paths)
    assert mlflow.get_tracking_uri() == mlflow_server
    name = tiny_config.registry.model_name
    test = prepared_split(60, seed=5)
    versions = []
    for kind in ("good", "shuffled"):
        report = evaluate_model(
            tiny_classifiers[kind],
            test,
            ["negative", "positive"],
            EvalConfig(latency_samples=2),
            tmp_path / kind,
        )
        with tracking.parent_run(tiny_config), tracking.stage_run("evaluate") as run:
            uri = log_classifier_model(tiny_classifiers[kind]).model_uri
            version = registry.register_challenger(
                name, uri, report, {"git_commit": "abc"}, tiny_config, run.info.run_id
            )
        versions.append(apply_gate(name, str(version.version), report, tiny_config.gate))
    assert [decision.outcome for decision in versions] == ["promoted", "rejected"]
    client = registry.make_client()
    assert registry.aliases(client, name) == {"champion": "1", "challenger": "2"}
    # The alias history lives on the server too: one gated move, none for the rejection.
    from components.alias_history import alias_history

    moves = alias_history(client, name)
    assert [(m.alias, m.from_version, m.to_version, m.kind) for m in moves] == [
        ("champion", None, "1", "gated")
    ]

    # A fresh Python process loads the champion by alias over HTTP and predicts labels.
    script = (
        "import mlflow, pandas as pd\n"
        f"model = mlflow.pyfunc.load_model('models:/{name}@champion')\n"
        "out = model.predict(pd.DataFrame({'text': ['the movie was superb number 1',"
        " 'the plot was awful number 2']}))\n"
        "print(list(out['label']))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=300, check=False
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == "['positive', 'negative']"
