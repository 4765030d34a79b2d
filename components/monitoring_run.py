"""``ratchet monitor``'s I/O: the champion's reference from MLflow, the logged traffic of
the window, the Evidently report, and the record logged against the champion's version.

    ratchet monitor --since 24h --json

The decision itself is pure (``components/monitoring.py``).
"""

from __future__ import annotations

import json
import tempfile
import time
import warnings
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from components.config import RatchetConfig
from components.errors import RegistryError
from components.monitoring import DriftResult, check_drift
from components.monitoring_reference import REFERENCE_FILE, rebuild_reference
from components.state import ProjectPaths
from components.text_features import NUMERIC_FEATURES
from components.traffic import parse_duration, read_traffic, traffic_dir

REPORT_HTML = "drift_report.html"
REPORT_PNG = "drift_report.png"
SUMMARY_JSON = "drift_summary.json"
MONITOR_RUN_TAG = "ratchet.monitor"
DRIFT_TAG = "monitor.drift"


@dataclass(frozen=True)
class MonitorOutcome:
    result: DriftResult
    model_name: str
    version: str
    run_id: str | None  # the MLflow run holding the report (None: not enough data)
    picture: bytes | None = None  # the drift picture (PNG) logged with the report


def champion_reference(config: RatchetConfig) -> tuple[str, pd.DataFrame]:
    """The registry version behind ``serving.alias`` and its monitoring reference.

    Raises:
        RegistryError: no such alias, or the version has no logged evaluation.
    """
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    from components.evaluate import PREDICTIONS_FILE
    from components.registry import download_evaluation_file

    client = MlflowClient()
    name, alias = config.registry.model_name, config.serving.alias
    try:
        model_version = client.get_model_version_by_alias(name, alias)
    except MlflowException as error:
        raise RegistryError(
            f"registered model {name!r} has no alias {alias!r}: nothing is served to monitor"
        ) from error
    version = str(model_version.version)
    with tempfile.TemporaryDirectory(prefix="ratchet-monitor-") as tmp:
        path = download_evaluation_file(client, model_version, REFERENCE_FILE, Path(tmp))
        if path is not None:
            return version, pd.read_parquet(path)
        predictions = download_evaluation_file(client, model_version, PREDICTIONS_FILE, Path(tmp))
        if predictions is None:
            raise RegistryError(
                f"{name} v{version} ({alias}) has no logged evaluation to compare traffic "
                "with; evaluate and register it with `ratchet retrain`"
            )
        return version, rebuild_reference(name, version, pd.read_parquet(predictions))


def traffic_window(
    paths: ProjectPaths, version: str, since_s: float, now: float
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """The texts the champion served in the window, and the window's description."""
    logged = read_traffic(traffic_dir(paths), since=now - since_s, until=now)
    served = logged[logged["version"].astype(str) == version] if len(logged) else logged
    window = {
        "since": datetime.fromtimestamp(now - since_s, UTC).isoformat(timespec="seconds"),
        "until": datetime.fromtimestamp(now, UTC).isoformat(timespec="seconds"),
        "model_version": version,
        "requests": int(served["request"].nunique()) if len(served) else 0,
        "texts": len(served),
        "other_versions_texts": len(logged) - len(served),
    }
    return served, window


def write_evidently_report(reference: pd.DataFrame, current: pd.DataFrame, path: Path) -> dict:
    """Evidently's data-drift report over the label, confidence and text features."""
    from evidently import DataDefinition, Dataset, Report
    from evidently.presets import DataDriftPreset

    columns = ["label", "confidence", *NUMERIC_FEATURES]
    definition = DataDefinition(
        numerical_columns=["confidence", *NUMERIC_FEATURES], categorical_columns=["label"]
    )
    # A constant feature (e.g. an OOV rate of 0 under an uncased tokenizer) makes numpy
    # warn inside Evidently's correlations; the tests above already cover that column.
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore", RuntimeWarning)
        current_data, reference_data = (
            Dataset.from_pandas(table[columns].reset_index(drop=True), data_definition=definition)
            for table in (current, reference)
        )
        snapshot = Report([DataDriftPreset()]).run(current_data, reference_data)
    snapshot.save_html(str(path))
    return dict(snapshot.dict())


def log_monitor_run(
    config: RatchetConfig, version: str, result: DriftResult, files: list[Path]
) -> str:
    """One MLflow run per check, tagged with the champion's version, which gets the
    outcome as version tags (``monitor.drift``, ``monitor.run_id``)."""
    import mlflow
    from mlflow import MlflowClient

    name = config.registry.model_name
    tags = {MONITOR_RUN_TAG: "drift", "model_name": name, "model_version": version}
    with mlflow.start_run(run_name=f"monitor-v{version}", tags=tags) as run:
        mlflow.log_metrics(
            {f"drift.{test}.p_value": check.p_value for test, check in result.tests.items()}
        )
        mlflow.log_metric("drift.texts", result.window.get("texts", 0))
        for path in files:
            mlflow.log_artifact(str(path), "monitoring")
    client = MlflowClient()
    client.set_model_version_tag(name, version, DRIFT_TAG, str(result.drift).lower())
    client.set_model_version_tag(name, version, "monitor.run_id", run.info.run_id)
    return str(run.info.run_id)


def run_monitor(
    config: RatchetConfig,
    paths: ProjectPaths,
    since: str | None = None,
) -> MonitorOutcome:
    """Compare the window's traffic with the champion's reference; log the report.

    Returns:
        The outcome; with enough data the Evidently HTML report, the JSON summary and
        the drift picture are logged to MLflow (``monitoring/``) in a run tagged with the
        champion's version (the picture is also returned, for the caller to save).
    """
    from components.monitoring_plots import plot_drift
    from components.tracking import setup_tracking

    setup_tracking(config, paths)
    since_s = parse_duration(since or config.monitor.window)
    version, reference = champion_reference(config)
    current, window = traffic_window(paths, version, since_s, time.time())
    result = check_drift(reference, current, config.monitor, window)
    if result.drift is None:
        return MonitorOutcome(result, config.registry.model_name, version, None)
    with tempfile.TemporaryDirectory(prefix="ratchet-monitor-") as tmp:
        html, summary = Path(tmp) / REPORT_HTML, Path(tmp) / SUMMARY_JSON
        evidently = write_evidently_report(reference, current, html)
        payload = {**result.to_dict(), "evidently": evidently.get("metrics", [])}
        summary.write_text(json.dumps(payload, indent=2, default=str), encoding="utf-8")
        picture = plot_drift(reference, current, result, Path(tmp) / REPORT_PNG)
        run_id = log_monitor_run(config, version, result, [html, summary, picture])
        png = picture.read_bytes()
    return MonitorOutcome(result, config.registry.model_name, version, run_id, png)
