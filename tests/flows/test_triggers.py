"""Event-driven retraining against a real `prefect server` on loopback: `ratchet deploy`
sets up the hourly monitor and retrain-on-demand's triggers, and a `ratchet.drift.detected`
or `ratchet.feedback.ready` event (as `ratchet monitor` / `ratchet feedback export` emit
them) creates a retrain-on-demand flow run. (That such a run completes on a process worker
is test_deployment's test; no worker runs here, so the created runs stay scheduled.)"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from components.events import DRIFT_EVENT, FEEDBACK_EVENT
from tests.flows.test_deployment import prefect_server, ratchet_deploy  # noqa: F401

pytestmark = [pytest.mark.integration, pytest.mark.slow]
EMIT = (
    "import sys; from components.events import emit_ratchet_event; "
    "params = sys.argv[2] if len(sys.argv) > 2 else None; "
    "sys.exit(0 if emit_ratchet_event(sys.argv[1], 'ratchet-sst2', {'drift': True}, '3', params) "
    "else 9)"
)


def triggered_runs(api: str, deployment_id: str) -> list[dict]:
    response = httpx.post(
        f"{api}/flow_runs/filter",
        json={"flow_runs": {"deployment_id": {"any_": [deployment_id]}}},
        timeout=10,
    )
    response.raise_for_status()
    return list(response.json())


def wait_for_runs(api: str, deployment_id: str, count: int, timeout_s: float = 90) -> list[dict]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        runs = triggered_runs(api, deployment_id)
        if len(runs) >= count:
            return runs
        time.sleep(1)
    raise AssertionError(f"{count} retrain-on-demand runs not created within {timeout_s:.0f} s")


def test_drift_and_feedback_events_start_retrain_on_demand(
    prefect_server: dict[str, str],  # noqa: F811
    flow_project: Path,
    state_dir: Path,
) -> None:
    env = {**prefect_server, "RATCHET_HOME": str(state_dir)}
    env["MLFLOW_TRACKING_URI"] = os.environ["MLFLOW_TRACKING_URI"]
    deployed = ratchet_deploy(flow_project, env)
    assert deployed.returncode == 0, deployed.stdout + deployed.stderr
    api = env["PREFECT_API_URL"]
    monitor = httpx.get(f"{api}/deployments/name/monitor/monitor", timeout=10).json()
    assert [item["schedule"]["cron"] for item in monitor["schedules"]] == ["0 * * * *"]
    retrain = httpx.get(f"{api}/deployments/name/retrain/retrain-on-demand", timeout=10).json()
    assert triggered_runs(api, retrain["id"]) == []

    # A further model's event names its params (docs/models.md); the default's may not.
    emitted_params = ["pipelines/ner/params.yaml", None]
    for count, event in enumerate((DRIFT_EVENT, FEEDBACK_EVENT), start=1):
        params = emitted_params[count - 1]
        emit = [sys.executable, "-c", EMIT, event, *([params] if params else [])]
        emitted = subprocess.run(emit, env=env, cwd=flow_project, timeout=120)
        assert emitted.returncode == 0
        runs = wait_for_runs(api, retrain["id"], count)
        assert len(runs) == count
    assert sorted(run["parameters"]["params"] for run in runs) == [
        "params.yaml",
        "pipelines/ner/params.yaml",
    ]
