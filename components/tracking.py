"""The one module that talks to MLflow runs: experiment setup, runs, params, metrics, artifacts.

A flow run is one parent run with one nested run per stage::

    experiment_id = setup_tracking(config, paths)
    with parent_run(config, run_name="retrain", tags={"flow_run_id": ...}) as parent:
        with stage_run("train") as stage:
            on_metrics = metrics_logger(stage.info.run_id)
            run_finetuning(..., on_metrics=on_metrics)
            on_metrics.flush()

With the default SQLite store in the state folder, artifacts go to
``<state>/mlartifacts`` (a file URI), so ``mlflow ui --backend-store-uri sqlite:///...``
shows runs, plots and model cards without a server. Components never import this module:
they return metrics and file paths, and the flow passes them here.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import tempfile
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import mlflow
from mlflow import MlflowClient
from mlflow.entities import Metric, Param, Run

from components.config import RatchetConfig
from components.state import ProjectPaths, mlflow_tracking_uri

if TYPE_CHECKING:
    from components.evaluate import EvaluationReport
    from components.token_evaluate import TokenEvaluationReport

logger = logging.getLogger(__name__)

# MLflow's limits (mlflow.utils.validation): longer values are rejected, not truncated.
MAX_PARAM_VALUE = 6000
MAX_PARAMS_PER_BATCH = 100
MAX_METRICS_PER_BATCH = 1000
STAGE_TAG = "ratchet.stage"
EVALUATION_ARTIFACT_DIR = "evaluation"


def is_default_store(tracking_uri: str, paths: ProjectPaths) -> bool:
    return tracking_uri == f"sqlite:///{paths.mlflow_db}"


def setup_tracking(config: RatchetConfig, paths: ProjectPaths) -> str:
    """Point MLflow at the configured store and make ``registry.experiment`` current.

    Returns:
        The experiment id. A new experiment on the default SQLite store keeps its
        artifacts in ``paths.mlflow_artifacts``.
    """
    tracking_uri = mlflow_tracking_uri(config, paths)
    mlflow.set_tracking_uri(tracking_uri)
    name = config.registry.experiment
    experiment = mlflow.get_experiment_by_name(name)
    if experiment is None:
        artifact_location = None
        if is_default_store(tracking_uri, paths):
            paths.mlflow_artifacts.mkdir(parents=True, exist_ok=True)
            artifact_location = paths.mlflow_artifacts.as_uri()
        experiment_id = mlflow.create_experiment(name, artifact_location=artifact_location)
    else:
        experiment_id = experiment.experiment_id
    mlflow.set_experiment(experiment_id=experiment_id)
    return experiment_id


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``; lists stay values."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


def config_params(config: RatchetConfig) -> dict[str, str]:
    """The resolved config as MLflow params: dotted keys, values cut to MLflow's limit."""
    params = {}
    for key, value in flatten(config.model_dump(mode="json")).items():
        text = value if isinstance(value, str) else json.dumps(value)
        params[key] = text if len(text) <= MAX_PARAM_VALUE else text[: MAX_PARAM_VALUE - 3] + "..."
    return params


def log_config(config: RatchetConfig, run_id: str) -> None:
    """Log the config as params (in batches of MLflow's maximum) and as ``config/config.yaml``."""
    client = MlflowClient()
    items = [Param(key, value) for key, value in sorted(config_params(config).items())]
    for start in range(0, len(items), MAX_PARAMS_PER_BATCH):
        client.log_batch(run_id, params=items[start : start + MAX_PARAMS_PER_BATCH])
    client.log_text(run_id, config.to_yaml(), "config/config.yaml")
    client.set_tag(run_id, "config_hash", config.build_hash())


def system_facts() -> dict[str, str]:
    """Device, library versions and CPU/GPU names, for reproducing a run's timings."""
    import torch
    import transformers

    facts = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": str(os.cpu_count()),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "mlflow": mlflow.__version__,
        "torch_threads": str(torch.get_num_threads()),
        "device": "cuda" if torch.cuda.is_available() else "cpu",
    }
    if torch.cuda.is_available():
        facts["gpu"] = torch.cuda.get_device_name(0)
    return facts


def log_system_facts(run_id: str) -> dict[str, str]:
    """Log :func:`system_facts` as ``system.*`` tags; returns them."""
    facts = system_facts()
    MlflowClient().log_batch(run_id, tags=[_tag(f"system.{k}", v) for k, v in facts.items()])
    return facts


def _tag(key: str, value: str) -> Any:
    from mlflow.entities import RunTag

    return RunTag(key, value)


@contextmanager
def parent_run(
    config: RatchetConfig, run_name: str = "retrain", tags: Mapping[str, str] | None = None
) -> Iterator[Run]:
    """The flow's parent run, with the resolved config and system facts already logged."""
    with mlflow.start_run(run_name=run_name, tags=dict(tags or {})) as run:
        log_config(config, run.info.run_id)
        log_system_facts(run.info.run_id)
        yield run


@contextmanager
def stage_run(stage: str, tags: Mapping[str, str] | None = None) -> Iterator[Run]:
    """A nested run for one stage (validate, prepare, pretrain, train, evaluate)."""
    with mlflow.start_run(
        run_name=stage, nested=True, tags={STAGE_TAG: stage, **(tags or {})}
    ) as run:
        yield run


class MetricsLogger:
    """``on_metrics(step, metrics)`` callback that buffers and writes with ``log_batch``.

    Writes happen every ``flush_every`` records or ``flush_seconds`` seconds, and on
    :meth:`flush` (call it when training ends, or use the logger as a context manager).
    """

    def __init__(self, run_id: str, flush_every: int = 200, flush_seconds: float = 10.0) -> None:
        self.run_id = run_id
        self.flush_every = flush_every
        self.flush_seconds = flush_seconds
        self.pending: list[Metric] = []
        self.last_flush = time.monotonic()
        self.client = MlflowClient()

    def __call__(self, step: int, metrics: Mapping[str, float]) -> None:
        timestamp = int(time.time() * 1000)
        for key, value in metrics.items():
            if value is not None:
                self.pending.append(Metric(key, float(value), timestamp, int(step)))
        overdue = time.monotonic() - self.last_flush > self.flush_seconds
        if len(self.pending) >= self.flush_every or overdue:
            self.flush()

    def flush(self) -> None:
        for start in range(0, len(self.pending), MAX_METRICS_PER_BATCH):
            self.client.log_batch(
                self.run_id, metrics=self.pending[start : start + MAX_METRICS_PER_BATCH]
            )
        self.pending = []
        self.last_flush = time.monotonic()

    def __enter__(self) -> MetricsLogger:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.flush()


def metrics_logger(run_id: str, flush_every: int = 200) -> MetricsLogger:
    """The training callback for ``run_pretraining``/``run_finetuning`` ``on_metrics``."""
    return MetricsLogger(run_id, flush_every=flush_every)


def log_metrics(run_id: str, metrics: Mapping[str, float], step: int = 0) -> None:
    """Log a dict of final metrics (e.g. perplexity before/after) in one batch."""
    with MetricsLogger(run_id, flush_every=MAX_METRICS_PER_BATCH) as log:
        log(step, metrics)


def log_artifacts(run_id: str, path: Path, artifact_path: str | None = None) -> None:
    """Log a file or a folder (e.g. GE Data Docs) to the run."""
    client = MlflowClient()
    if path.is_dir():
        client.log_artifacts(run_id, str(path), artifact_path)
    else:
        client.log_artifact(run_id, str(path), artifact_path)


def log_dict(run_id: str, payload: Mapping[str, Any], artifact_file: str) -> None:
    """Log a JSON (or YAML, by suffix) artifact, e.g. the validation summary."""
    MlflowClient().log_dict(run_id, dict(payload), artifact_file)


def log_text(run_id: str, text: str, artifact_file: str) -> None:
    MlflowClient().log_text(run_id, text, artifact_file)


def log_evaluation(run_id: str, report: EvaluationReport | TokenEvaluationReport) -> None:
    """Log an evaluation's metrics and every file it wrote under ``evaluation/``.

    The confident mistakes are also logged as an MLflow table, which the UI renders.
    """
    log_metrics(run_id, report.metrics)
    client = MlflowClient()
    for path in report.artifacts.values():
        client.log_artifact(run_id, str(path), EVALUATION_ARTIFACT_DIR)
    mistakes = report.artifacts.get("confident_mistakes.csv")
    if mistakes is not None:
        import pandas as pd

        client.log_table(run_id, pd.read_csv(mistakes), "evaluation/confident_mistakes.json")


def download_run_artifact(run_id: str, artifact_path: str, dst: Path | None = None) -> Path:
    """Download one artifact of a run; into a new temporary folder when ``dst`` is None."""
    target = dst or Path(tempfile.mkdtemp(prefix="ratchet-artifact-"))
    target.mkdir(parents=True, exist_ok=True)
    return Path(MlflowClient().download_artifacts(run_id, artifact_path, str(target)))


def run_metrics(run_id: str) -> dict[str, float]:
    return dict(MlflowClient().get_run(run_id).data.metrics)
