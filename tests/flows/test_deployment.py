"""Scheduled-retraining path: a real `prefect server` on loopback, `ratchet deploy`, a process
worker, and a `retrain-on-demand` run that must complete and register a model."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from components.waiting import wait_for_http
from tests.flows.conftest import flow_overrides

pytestmark = [pytest.mark.integration, pytest.mark.slow]
BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def ratchet_deploy(project: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """`ratchet deploy` of the project's prefect.yaml to the server in ``env``."""
    return subprocess.run(
        [str(BIN / "ratchet"), "deploy", "--params", str(project / "params.yaml")],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


@pytest.fixture
def prefect_server(tmp_path: Path) -> Iterator[dict[str, str]]:
    port = free_port()
    env = {
        **os.environ,
        "PREFECT_HOME": str(tmp_path / "prefect-server"),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_API_URL": f"http://127.0.0.1:{port}/api",
    }
    log = (tmp_path / "server.log").open("w")
    server = subprocess.Popen(
        [str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        wait_for_http(f"http://127.0.0.1:{port}/api/health", 120)
        yield env
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_on_demand_deployment_runs_on_a_process_worker(
    prefect_server: dict[str, str], flow_project: Path, state_dir: Path, tiny_bert_dir: Path
) -> None:
    env = {
        **prefect_server,
        "RATCHET_HOME": str(state_dir),
        "MLFLOW_TRACKING_URI": os.environ["MLFLOW_TRACKING_URI"],  # set by state_dir
    }
    deployed = ratchet_deploy(flow_project, env)
    assert deployed.returncode == 0, deployed.stdout + deployed.stderr

    worker_log = (state_dir / "worker.log").open("w")
    worker = subprocess.Popen(
        [str(BIN / "prefect"), "worker", "start", "--pool", "ratchet-process"],
        env=env,
        cwd=flow_project,
        stdout=worker_log,
        stderr=subprocess.STDOUT,
    )
    from prefect.client.orchestration import get_client
    from prefect.deployments import run_deployment
    from prefect.settings import PREFECT_API_URL, temporary_settings

    try:
        with temporary_settings(updates={PREFECT_API_URL: env["PREFECT_API_URL"]}):
            with get_client(sync_client=True) as client:
                names = {deployment.name for deployment in client.read_deployments()}
            assert {"retrain-nightly", "retrain-on-demand"} <= names

            flow_run = run_deployment(
                "retrain/retrain-on-demand",
                parameters={"overrides": flow_overrides(tiny_bert_dir)},
                timeout=600,
            )
        assert flow_run.state is not None
        assert flow_run.state.is_completed(), (
            flow_run.state.message,
            (state_dir / "worker.log").read_text()[-3000:],
        )
    finally:
        worker.terminate()
        try:
            worker.wait(timeout=30)
        except subprocess.TimeoutExpired:
            # The worker's graceful shutdown can outlast 30 s on a busy machine; the run
            # under test has finished by now either way.
            worker.kill()
            worker.wait()

    from mlflow import MlflowClient

    aliases = MlflowClient().get_registered_model("ratchet-sst2").aliases
    assert str(aliases.get("champion")) == "1"
