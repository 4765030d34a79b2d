"""Prefect tasks of the retrain flow: thin wrappers that add retries, caching and logging.

Each task calls one ``components`` function. Retries sit only on steps that talk to an
external service (the DVC remote, the MLflow registry); deterministic failures such as a
validation error are never retried. Expensive steps are cached on an explicit key (see
``flows/keys.py``) and write into a folder named after that key, so a cached result always
points at the model it describes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import task

from components.config import RatchetConfig
from components.state import ProjectPaths, dvc_remote_url
from flows.keys import cache_key_from_argument

# Steps that reach a service (DVC remote, MLflow registry) retry with backoff, but only
# on errors a retry can cure: a refused connection, a timeout, a 5xx.
RETRIES = 3
RAW_SNAPSHOT = "data/raw"  # what the DVC stages validate and prepare
RETRY_DELAYS = [2.0, 5.0, 15.0]
TRANSIENT_ERRORS = (ConnectionError, TimeoutError)
TOKEN_TASK = "token-classification"  # data.task whose steps read token data


def is_transient(error: BaseException) -> bool:
    """True for network trouble anywhere in the exception chain."""
    import httpx
    import requests
    from mlflow.exceptions import RestException

    seen: BaseException | None = error
    while seen is not None:
        if isinstance(seen, TRANSIENT_ERRORS + (httpx.TransportError, requests.ConnectionError)):
            return True
        if isinstance(seen, RestException) and seen.get_http_status_code() >= 500:
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def retry_when_transient(task: Any, task_run: Any, state: Any) -> bool:
    """Prefect ``retry_condition_fn``: deterministic failures are never retried."""
    try:
        state.result()
    except Exception as error:
        return is_transient(error)
    return False


@task(name="ingest")
def ingest_data(config: RatchetConfig, paths: ProjectPaths) -> Path:
    """Byte-for-byte snapshot of ``data.source`` into a staging folder beside ``data/raw``
    (the file formats of ``data.task``)."""
    from components.ingest import formats_for_task, stage_snapshot

    formats = formats_for_task(config.data.task)
    return stage_snapshot(config.data.source, paths.model_root, paths.raw_dir, formats)


@task(name="validate")
def validate_data(
    config: RatchetConfig, paths: ProjectPaths, snapshot: Path, report_path: Path
) -> dict[str, Any]:
    """Great Expectations suite over the staged snapshot; raises ``DataValidationError``.

    A snapshot that passes replaces ``data/raw``; one that fails stays in ``data/incoming``
    (where the error's file and line numbers point), so ``data/raw`` only ever holds
    validated data."""
    from components.files import replace_folder
    from components.validate import run_validation

    # The summary names data/raw, as the DVC stage's does, so dvc.lock reads the same
    # whichever of the two validated the snapshot.
    if config.data.task == TOKEN_TASK:
        report = validate_token_snapshot(config, paths, snapshot, report_path)
    else:
        report = run_validation(str(snapshot), config.data, paths, report_path, RAW_SNAPSHOT)
    replace_folder(snapshot, paths.raw_dir)
    return report.to_dict()


def validate_token_snapshot(
    config: RatchetConfig, paths: ProjectPaths, snapshot: Path, report_path: Path
) -> Any:
    """The token data checks (``ratchet validate``'s for data.task token-classification)
    on the staged snapshot; the summary names data/raw."""
    from dataclasses import replace

    from components.token_validate import run_token_validation
    from components.validation_report import write_summary

    report = run_token_validation(str(snapshot), config, paths)
    return write_summary(replace(report, source=RAW_SNAPSHOT), report_path)


@task(name="prepare")
def prepare_data(config: RatchetConfig, paths: ProjectPaths) -> dict[str, Any]:
    """Stable hash-based splits of ``data/raw`` into ``data/prepared`` (already validated)."""
    from components.prepare import run_prepare
    from components.token_prepare import run_token_prepare

    if config.data.task == TOKEN_TASK:
        return run_token_prepare(RAW_SNAPSHOT, config, paths, validate=False)
    return run_prepare(RAW_SNAPSHOT, config.data, paths, validate=False)


@task(name="version-data")
def version_data(paths: ProjectPaths, stages: list[str]) -> dict[str, str | None]:
    """Record the data stages' outputs in ``dvc.lock``; return the md5s the lineage
    records (``raw_data_md5``, ``prepared_data_md5``: the declaration's lineage tags)."""
    from components import versioning
    from components.pipeline import PIPELINE

    versioning.commit_stage_outputs(paths.model_root, stages)
    return {
        tag: versioning.locked_md5(paths.model_root, out_path)
        for tag, out_path in PIPELINE.lineage_outputs().items()
    }


@task(
    name="push-data",
    retries=RETRIES,
    retry_delay_seconds=RETRY_DELAYS,
    retry_condition_fn=retry_when_transient,
)
def push_data(config: RatchetConfig, paths: ProjectPaths) -> str:
    """Upload the versioned data to the DVC remote (local folder or object store); returns
    its URL as it may be recorded (credentials masked)."""
    from components import versioning
    from components.secrets import mask_uri_credentials

    remote = dvc_remote_url(config, paths)
    versioning.push(paths.model_root, remote)
    return mask_uri_credentials(remote)


@task(name="measure-truncation")
def measure_truncation(
    config: RatchetConfig, paths: ProjectPaths, base_model: str | None = None
) -> dict[str, float]:
    """Share of train and test texts (sentences, for token classification) longer than
    ``model.max_length`` sub-word tokens (base model's tokenizer):
    ``data.truncated_fraction_train`` / ``_test``."""
    from components.truncation import measure_prepared_truncation

    return measure_prepared_truncation(config, paths, base_model)


@task(cache_key_fn=cache_key_from_argument, persist_result=True)
def model_stage(
    stage: str,
    config: RatchetConfig,
    paths: ProjectPaths,
    cache_key: str,
    init_model: str,
    output_dir: Path,
    run_id: str,
) -> dict[str, Any]:
    """One model stage of the pipeline declaration (``pretrain``, ``train``: its node in
    ``components/model_stages.py``) from ``init_model``; resumes from
    ``checkpoints/<cache_key>``. The flow names each run after its stage."""
    from components import tracking
    from components.model_stages import MODEL_NODES, ModelStageRun

    with tracking.metrics_logger(run_id) as on_metrics:
        run = ModelStageRun(init_model, output_dir, paths.checkpoints_dir / cache_key, on_metrics)
        result = MODEL_NODES[stage](config, paths, run)
    tracking.log_metrics(run_id, result.metrics)
    return {"model_dir": str(result.model_dir), "metrics": result.metrics, "info": result.info}


@task(name="evaluate")
def evaluate_model(
    config: RatchetConfig, paths: ProjectPaths, model_dir: Path, output_dir: Path
) -> Any:
    """Score the frozen test split: metrics, plots, slices, latency, behavioural checks,
    at the settings the model will be served with (``model.max_length``,
    ``serving.precision``)."""
    from components.model_stages import evaluate_node

    return evaluate_node(config, paths, model_dir, output_dir, paths.project_root)


@task(
    name="register",
    retries=RETRIES,
    retry_delay_seconds=RETRY_DELAYS,
    retry_condition_fn=retry_when_transient,
)
def register_model(
    config: RatchetConfig,
    model_dir: Path,
    report: Any,
    lineage: dict[str, Any],
    eval_run_id: str,
) -> str:
    """Log the model to the active (evaluate) run and register it as ``challenger``: a
    token classifier as a token pyfunc (same Hugging Face folder layout), tagged
    ``task=token-classification``."""
    from components.mlflow_model import log_classifier_model, log_token_model
    from components.registry import register_challenger

    token = config.data.task == TOKEN_TASK
    model_info = log_token_model(model_dir) if token else log_classifier_model(model_dir)
    version = register_challenger(
        config.registry.model_name, model_info.model_uri, report, lineage, config, eval_run_id
    )
    return str(version.version)


@task(name="gate")
def gate_challenger(config: RatchetConfig, paths: ProjectPaths, version: str, report: Any) -> Any:
    """Compare with the champion on the same test split; if earned, build and check the
    challenger's Bento, then move the alias under the alias lock."""
    from components.promotion import apply_gate

    return apply_gate(
        config.registry.model_name,
        version,
        report,
        config.gate,
        batch_size=config.eval.batch_size,
        release=release_for(config, paths),
        state_dir=paths.state_dir,
    )


def release_for(config: RatchetConfig, paths: ProjectPaths) -> Any:
    """The function that finds or builds and checks a version's Bento before an alias moves."""
    from serving.release import release_version

    return lambda version: release_version(config, paths, version)


@task(
    name="build-bento",
    retries=RETRIES,
    retry_delay_seconds=RETRY_DELAYS,
    retry_condition_fn=retry_when_transient,
)
def build_bento(config: RatchetConfig, paths: ProjectPaths, version: str) -> str:
    """The checked Bento of a registry version (the champion's, on a rerun that finds it
    without one); reused when one was built with the current serving settings."""
    from serving.release import release_version

    return release_version(config, paths, version)
