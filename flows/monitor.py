"""The ``monitor`` flow: ``ratchet monitor`` on a schedule, and the drift event.

    prefect deployment run monitor/monitor      # or the hourly `monitor` deployment

On drift it emits ``ratchet.drift.detected`` (the test figures as payload), which
``retrain-on-demand``'s deployment trigger in ``prefect.yaml`` reacts to. One event per
champion version: a champion whose drift was already announced is not announced again
every hour while the retrain it started runs (or after its challenger was rejected).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger

from components.config import RatchetConfig, load_config
from components.state import ProjectPaths, configure_environment

ANNOUNCED_TAG = "monitor.drift_event"


def announce_drift(
    config: RatchetConfig, version: str, summary: dict[str, Any], params: str | None = None
) -> bool:
    """Emit ``ratchet.drift.detected`` once per champion version; returns whether it was.
    ``params``: the model's params.yaml relative to the project root, for the trigger."""
    from mlflow import MlflowClient

    from components.events import DRIFT_EVENT, emit_ratchet_event

    name = config.registry.model_name
    client = MlflowClient()
    if client.get_model_version(name, version).tags.get(ANNOUNCED_TAG):
        return False
    if not emit_ratchet_event(DRIFT_EVENT, name, summary, version, params):
        return False
    client.set_model_version_tag(name, version, ANNOUNCED_TAG, summary["window"]["until"])
    return True


@flow(name="monitor", log_prints=True)
def monitor(
    params: str = "params.yaml",
    since: str | None = None,
    overrides: list[str] | None = None,
) -> dict[str, Any]:
    """Compare the window's served traffic with the champion's reference; announce drift.

    Args:
        params: the project's params.yaml (its folder is the project root).
        since: the window, e.g. ``24h`` (default ``monitor.window``).
        overrides: ``dotted.key=value`` overrides.

    Returns:
        The ``ratchet monitor --json`` summary, with ``event`` (the event emitted or None).
    """
    from components.monitoring_run import run_monitor

    config = load_config(params, [], overrides or [])
    paths = ProjectPaths.discover(Path(params).resolve().parent)
    configure_environment(config, paths)
    outcome = run_monitor(config, paths, since)
    summary = outcome.result.to_dict()
    get_run_logger().info("%s v%s: %s", outcome.model_name, outcome.version, summary["reason"])
    announced = bool(outcome.result.drift) and announce_drift(
        config, outcome.version, summary, paths.params_in_project
    )
    return {**summary, "event": "ratchet.drift.detected" if announced else None}
