"""The MLflow model registry as reviewers use it: versions with lineage, cards and aliases.

Every evaluated model becomes a new version of ``registry.model_name`` with lineage tags
(git commit and dirty flag, DVC md5s, config hash, base model and its hash, parent run,
flow run), key metrics as tags, and a model card as its description; the alias
``challenger`` marks the newest. The gate (``components/promotion.py``) moves ``champion`` and
keeps the one before as ``previous-champion``; ``components.aliases.rollback`` moves it back.

A version's evaluation run holds ``evaluation/`` (metrics files, plots, predictions) and
``lineage/config.yaml``, so a version can be compared, re-gated and reproduced from the
registry alone. The reviewers' read-only reports (list, show, compare) are
``components/registry_reports.py``; alias moves under the lock are ``components/aliases.py``.
"""

from __future__ import annotations

import getpass
import json
import tempfile
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import mlflow
import numpy as np
import pandas as pd
import yaml
from mlflow import MlflowClient
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import RESOURCE_DOES_NOT_EXIST, ErrorCode

from components import tracking
from components.behaviour import CheckResult
from components.config import RatchetConfig
from components.errors import RegistryError
from components.evaluate import EVAL_FILE, PREDICTIONS_FILE, EvaluationReport
from components.model_card import HEADLINE_METRICS, CardInputs, render_model_card, with_decision
from components.secrets import redact_tree

if TYPE_CHECKING:
    from components.gate import GateDecision
    from components.token_evaluate import TokenEvaluationReport

    AnyReport = EvaluationReport | TokenEvaluationReport

CHAMPION = "champion"
CHALLENGER = "challenger"
PREVIOUS_CHAMPION = "previous-champion"
GATE_STATE = "gate.state"  # pending from registration until the gate's last write: done
GATE_PENDING, GATE_DONE = "pending", "done"
LINEAGE_CONFIG = "lineage/config.yaml"
LINEAGE_TAGS = (
    "git_commit",
    "git_dirty",
    "raw_data_md5",
    "prepared_data_md5",
    "test_split_md5",
    "config_hash",
    "base_model_id",
    "base_model_hash",
    "parent_run_id",
    "flow_run_id",
    "feedback_rows",  # rows of data/feedback in the train split (components/feedback_data.py)
    "feedback_data_md5",
)
LISTED_METRICS = ("accuracy", "f1_macro", "roc_auc", "ece")
# A token classifier's rows add these; f1 is its entity micro-F1.
TOKEN_LISTED_METRICS = ("f1", "entity_precision", "entity_recall", "token_accuracy")
TASK_TAG = "task"  # data.task of the version: text-classification or token-classification
# Set on a version when it becomes champion (never removed): who ever held the alias.
CHAMPION_HELD = "champion.held"
# How a version is (or will be) served, so a re-score can use its own settings.
INFERENCE_MAX_LENGTH = "inference.max_length"
INFERENCE_PRECISION = "inference.precision"
INFERENCE_RUNTIME = "inference.runtime"


def make_client() -> MlflowClient:
    """A client for the current tracking URI (``MLFLOW_TRACKING_URI`` or ``setup_tracking``)."""
    return MlflowClient()


def is_missing(error: MlflowException) -> bool:
    return error.error_code == ErrorCode.Name(RESOURCE_DOES_NOT_EXIST)


def aliases(client: MlflowClient, model_name: str) -> dict[str, str]:
    """Alias -> version of a registered model; empty when the model does not exist yet."""
    try:
        registered = client.get_registered_model(model_name)
    except MlflowException as error:
        if is_missing(error):
            return {}
        raise
    # Stores differ in whether versions come back as int or str; callers compare strings.
    return {alias: str(version) for alias, version in registered.aliases.items()}


def version_by_alias(client: MlflowClient, model_name: str, alias: str) -> ModelVersion | None:
    """The version an alias points to, or None when the alias is not set."""
    version = aliases(client, model_name).get(alias)
    return None if version is None else get_version(client, model_name, version)


def get_version(client: MlflowClient, model_name: str, version: str | int) -> ModelVersion:
    """A model version, or a RegistryError naming what exists."""
    try:
        return client.get_model_version(model_name, str(version))
    except MlflowException as error:
        if is_missing(error):
            raise RegistryError(
                f"{model_name} has no version {version}; see `ratchet registry list`"
            ) from error
        raise


def version_tags(client: MlflowClient, model_name: str, version: str | int) -> dict[str, str]:
    return dict(get_version(client, model_name, version).tags)


def evaluation_run_id(model_version: ModelVersion) -> str:
    """The run holding the version's ``evaluation/`` and ``lineage/`` artifacts."""
    run_id = model_version.tags.get("eval_run_id") or model_version.run_id
    if not run_id:
        raise RegistryError(f"version {model_version.version} records no evaluation run")
    return str(run_id)


def parent_of(client: MlflowClient, run_id: str) -> str:
    return str(client.get_run(run_id).data.tags.get("mlflow.parentRunId", ""))


def lineage_tags(
    lineage: Mapping[str, Any], config: RatchetConfig, report: AnyReport, eval_run_id: str
) -> dict[str, str]:
    """Tags recorded on a version: lineage, config hash, test split, labels, key metrics."""
    tags = {key: str(value) for key, value in lineage.items() if value is not None}
    tags.setdefault("config_hash", config.build_hash())
    tags["test_split_md5"] = report.test_split_md5
    tags["eval_run_id"] = eval_run_id
    tags["labels"] = json.dumps(report.labels)
    tags[TASK_TAG] = config.data.task  # serving/build.py dispatches on it
    for name in HEADLINE_METRICS:
        if name in report.metrics:
            tags[f"metric.{name}"] = f"{report.metrics[name]:.6g}"
    tags.update(inference_tags(config))
    return tags


def inference_tags(config: RatchetConfig) -> dict[str, str]:
    """The settings the version is evaluated with, and re-scored with by the gate: token
    window, precision, runtime. Evaluation always runs torch; a Bento on an exported
    runtime (``serving.runtime``) is proven against it first and records ``parity.*``."""
    return {
        INFERENCE_MAX_LENGTH: str(config.model.max_length),
        INFERENCE_PRECISION: config.serving.precision,
        INFERENCE_RUNTIME: "torch",
    }


def recorded_inference_settings(tags: Mapping[str, str]) -> tuple[int | None, str]:
    """(max_length, precision) a version was evaluated with. Versions registered before
    these tags existed: None (the window saved in the model's tokenizer folder, which
    fine-tuning sets to ``model.max_length``) and fp32 (how evaluation scored then)."""
    max_length = tags.get(INFERENCE_MAX_LENGTH)
    return (int(max_length) if max_length else None), tags.get(INFERENCE_PRECISION, "fp32")


def score_version(
    client: MlflowClient,
    model_name: str,
    model_version: ModelVersion,
    texts: list[str],
    batch_size: int,
) -> np.ndarray:
    """Predicted ids of a version on ``texts``, scored with its own recorded settings."""
    from components.evaluate import score_texts

    max_length, precision = recorded_inference_settings(model_version.tags)
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = download_version(client, model_name, str(model_version.version), Path(tmp))
        probabilities = score_texts(model_dir, texts, batch_size, max_length, precision)
    return np.asarray(probabilities.argmax(axis=1))


def card_inputs(
    client: MlflowClient,
    model_name: str,
    version: str,
    report: AnyReport,
    tags: Mapping[str, str],
    config: RatchetConfig,
) -> CardInputs:
    champion = version_by_alias(client, model_name, CHAMPION)
    champion_metrics = None
    if champion is not None and str(champion.version) != str(version):
        champion_metrics = tracking.run_metrics(evaluation_run_id(champion))
    return CardInputs(
        model_name=model_name,
        version=version,
        labels=report.labels,
        metrics=report.metrics,
        lineage={key: tags[key] for key in LINEAGE_TAGS if key in tags},
        data_source=config.data.source,
        base_model=tags.get("base_model_id", str(config.model.base or "all-MiniLM-L6-v2")),
        training={
            "epochs": config.train.epochs,
            "max_steps": config.train.max_steps,
            "lr": config.train.lr,
            "batch_size": config.train.batch_size,
            "seed": config.train.seed,
            "pretrain": config.pretrain.enabled,
        },
        champion_version=str(champion.version) if champion and champion_metrics else None,
        champion_metrics=champion_metrics,
        behaviour=report.behaviour,
        task=config.data.task,
    )


def register_challenger(
    model_name: str,
    model_uri: str,
    report: AnyReport,
    lineage: Mapping[str, Any],
    config: RatchetConfig,
    eval_run_id: str,
    client: MlflowClient | None = None,
) -> ModelVersion:
    """Register an evaluated model as a new version and point ``challenger`` at it.

    Logs the evaluation (metrics and files, under ``evaluation/``) and the resolved config
    (``lineage/config.yaml``) to ``eval_run_id`` first, so the version is self-describing;
    the flow should not log the report again.

    Args:
        model_name: ``registry.model_name``.
        model_uri: ``log_classifier_model(...).model_uri``.
        report: the model's evaluation on the test split.
        lineage: ``git_commit``, ``git_dirty``, ``raw_data_md5``, ``prepared_data_md5``,
            ``base_model_id``, ``base_model_hash``, ``flow_run_id`` (and ``parent_run_id``;
            defaults to the evaluation run's parent). Every key becomes a tag.
        config: the resolved configuration (its hash is tagged, its YAML logged).
        eval_run_id: the run the evaluation belongs to (the flow's evaluate stage run).

    Returns:
        The new model version, with description (model card), tags and ``challenger`` alias.
    """
    client = client or make_client()
    tracking.log_evaluation(eval_run_id, report)
    tracking.log_text(eval_run_id, config.to_yaml(), LINEAGE_CONFIG)
    tags = lineage_tags(lineage, config, report, eval_run_id)
    tags.setdefault("parent_run_id", parent_of(client, eval_run_id))
    tags[GATE_STATE] = GATE_PENDING
    # A retried call (say, after a server error on the alias) finishes the version its
    # first attempt registered instead of registering a duplicate.
    number = find_version_by_tag(model_name, "eval_run_id", eval_run_id, client) or str(
        mlflow.register_model(model_uri, model_name, tags=tags).version
    )
    finish_registration(client, model_name, number, report, config)
    return get_version(client, model_name, number)


def finish_registration(
    client: MlflowClient,
    model_name: str,
    version: str,
    report: AnyReport,
    config: RatchetConfig,
) -> None:
    """Write the model card and point ``challenger`` at ``version``; safe to repeat."""
    tags = version_tags(client, model_name, version)
    card = render_model_card(card_inputs(client, model_name, version, report, tags, config))
    client.update_model_version(model_name, version, description=card)
    client.set_registered_model_alias(model_name, CHALLENGER, version)


def gate_pending(tags: Mapping[str, str]) -> bool:
    """Whether a version was registered but its gate never finished (a crash or kill
    between registering and the alias move). Versions registered before the
    ``gate.state`` tag existed count as finished once they carry a decision."""
    state = tags.get(GATE_STATE)
    return state == GATE_PENDING if state is not None else "gate.decision" not in tags


def mark_gate_done(client: MlflowClient, model_name: str, version: str) -> None:
    """The gate's last write, after any alias move: until then a rerun gates it again."""
    client.set_model_version_tag(model_name, version, GATE_STATE, GATE_DONE)


def download_evaluation_file(
    client: MlflowClient, model_version: ModelVersion, name: str, dst: Path
) -> Path | None:
    """Download ``evaluation/<name>`` of a version, or None when it was never logged."""
    run_id = evaluation_run_id(model_version)
    listed = {item.path for item in client.list_artifacts(run_id, tracking.EVALUATION_ARTIFACT_DIR)}
    wanted = f"{tracking.EVALUATION_ARTIFACT_DIR}/{name}"
    if wanted not in listed:
        return None
    return Path(client.download_artifacts(run_id, wanted, str(dst)))


def recorded_predictions(
    client: MlflowClient, model_name: str, version: str | int
) -> pd.DataFrame | None:
    """The per-example predictions logged with a version's evaluation, if any."""
    model_version = get_version(client, model_name, version)
    with tempfile.TemporaryDirectory() as tmp:
        path = download_evaluation_file(client, model_version, PREDICTIONS_FILE, Path(tmp))
        return None if path is None else pd.read_parquet(path)


def load_evaluation(client: MlflowClient, model_name: str, version: str | int) -> EvaluationReport:
    """Rebuild a version's :class:`EvaluationReport` from its logged files.

    Raises:
        RegistryError: the version has no logged evaluation.
    """
    model_version = get_version(client, model_name, version)
    with tempfile.TemporaryDirectory() as tmp:
        summary_path = download_evaluation_file(client, model_version, EVAL_FILE, Path(tmp))
        predictions_path = download_evaluation_file(
            client, model_version, PREDICTIONS_FILE, Path(tmp)
        )
        if summary_path is None or predictions_path is None:
            raise RegistryError(f"{model_name} v{version} has no logged evaluation to gate on")
        summary = json.loads(summary_path.read_text(encoding="utf-8"))
        predictions = pd.read_parquet(predictions_path)
    labels = list(summary["labels"])
    probabilities = predictions[[f"prob_{name}" for name in labels]].to_numpy()
    return EvaluationReport(
        metrics=dict(summary["metrics"]),
        labels=labels,
        y_true=predictions["label"].to_numpy(),
        predicted_ids=predictions["predicted"].to_numpy(),
        probabilities=probabilities,
        test_split_md5=summary["test_split_md5"],
        texts=predictions["text"].astype(str).tolist(),
        behaviour=[CheckResult.from_dict(item) for item in summary.get("behaviour", [])],
    )


def download_version(client: MlflowClient, model_name: str, version: str | int, dst: Path) -> Path:
    """Download a version's Hugging Face folder into ``dst`` and return it."""
    from components.mlflow_model import download_hf_model

    get_version(client, model_name, version)
    return download_hf_model(f"models:/{model_name}/{version}", dst)


def record_decision(
    client: MlflowClient, model_name: str, version: str, decision: GateDecision
) -> None:
    """Record a gate decision on the version: ``gate.*`` tags, JSON artifact, card section.

    Changes no alias.
    """
    payload = decision.to_dict()
    model_version = get_version(client, model_name, version)
    tags = {
        "gate.decision": decision.outcome,
        "gate.reason": decision.reason,
        "gate.decided_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "gate.champion_version": decision.champion_version or "",
        "gate.champion_rescored": str(decision.champion_rescored).lower(),
    }
    tags.update(decision_tags(decision))
    for key, value in tags.items():
        client.set_model_version_tag(model_name, version, key, value)
    tracking.log_dict(evaluation_run_id(model_version), payload, f"gate/decision-v{version}.json")
    card = with_decision(model_version.description or "", payload)
    client.update_model_version(model_name, version, description=card)


def decision_tags(decision: GateDecision) -> dict[str, str]:
    """The numbers of a decision worth filtering on: metric, split, both comparisons."""
    tags = {"gate.metric": decision.metric, "gate.test_split_md5": decision.test_split_md5 or ""}
    if decision.challenger_metric is not None:
        tags[f"gate.{decision.metric}"] = f"{decision.challenger_metric:.6g}"
    if decision.comparison is not None:
        tags["gate.mcnemar_p_value"] = f"{decision.comparison.mcnemar_p_value:.6g}"
        tags["gate.accuracy_difference"] = f"{decision.comparison.difference:+.6f}"
        tags["gate.metric_difference"] = f"{decision.comparison.metric_difference:+.6f}"
    tags["gate.best_champion_version"] = decision.best_champion_version or ""
    if decision.best_comparison is not None:
        best = decision.best_comparison
        tags["gate.best_champion_metric"] = f"{best.champion_metric:.6g}"
        tags["gate.best_metric_difference"] = f"{best.metric_difference:+.6f}"
    if decision.majority is not None:
        tags["gate.majority_accuracy"] = f"{decision.majority.baseline_accuracy:.6g}"
        tags["gate.majority_p_value"] = f"{decision.majority.p_value:.6g}"
    return tags


def move_champion(client: MlflowClient, model_name: str, version: str) -> str | None:
    """Make ``version`` the champion; the old champion becomes ``previous-champion``.

    ``previous-champion`` is set first: a crash between the two calls leaves ``champion``
    where it was. Returns the previous champion's version (None if there was none).
    """
    old = aliases(client, model_name).get(CHAMPION)
    if old is not None and old != version:
        client.set_registered_model_alias(model_name, PREVIOUS_CHAMPION, old)
    client.set_model_version_tag(model_name, version, CHAMPION_HELD, "true")
    client.set_registered_model_alias(model_name, CHAMPION, version)
    client.set_model_version_tag(model_name, version, "champion.held", "true")
    return old if old != version else None


def all_versions(client: MlflowClient, model_name: str) -> list[ModelVersion]:
    """Every version of a registered model; empty when the model does not exist yet."""
    try:
        return list(client.search_model_versions(f"name='{model_name}'"))
    except MlflowException as error:
        if is_missing(error):
            return []
        raise


def best_former_champion(
    client: MlflowClient,
    model_name: str,
    test_split_md5: str,
    metric: str,
    labels: list[str] | None = None,
) -> ModelVersion | None:
    """The version with the highest ``metric.<metric>`` tag among those that ever held
    ``champion`` (tag ``champion.held``, or the alias now) and were evaluated on
    ``test_split_md5`` (with the same ``labels``, when given).

    Versions demoted by a rollback (tag ``rolled_back_at``) do not count unless they hold
    ``champion`` again: a reviewer judged them unfit, so they set no bar. Versions that
    held the alias before the tag existed count only while they hold it.
    """
    current = aliases(client, model_name).get(CHAMPION)
    versions = all_versions(client, model_name)
    candidates = []
    for model_version in versions:
        tags = model_version.tags
        is_current = str(model_version.version) == current
        held = tags.get(CHAMPION_HELD) == "true" and "rolled_back_at" not in tags
        if not (held or is_current) or tags.get("test_split_md5") != test_split_md5:
            continue
        if labels is not None and tags.get("labels") not in (None, json.dumps(labels)):
            continue
        value = tags.get(f"metric.{metric}")
        if value is not None:
            candidates.append((float(value), int(model_version.version), model_version))
    if not candidates:
        return None
    # Highest metric; among equals the newest.
    return max(candidates, key=lambda item: (item[0], item[1]))[2]


def record_actor(
    client: MlflowClient, model_name: str, version: str, action: str, by: str | None, reason: str
) -> None:
    """Tag who did a manual registry action, when, and why."""
    stamp = datetime.now(UTC).isoformat(timespec="seconds")
    for key, value in {"by": by or getpass.getuser(), "reason": reason, "at": stamp}.items():
        client.set_model_version_tag(model_name, version, f"{action}.{key}", value)


def version_config_tree(client: MlflowClient, model_version: ModelVersion) -> dict[str, Any]:
    """The resolved config recorded with a version (``lineage/config.yaml``), as a mapping."""
    with tempfile.TemporaryDirectory() as tmp:
        path = client.download_artifacts(evaluation_run_id(model_version), LINEAGE_CONFIG, tmp)
        # Versions registered before redaction existed recorded secrets in plain text.
        return redact_tree(yaml.safe_load(Path(path).read_text(encoding="utf-8")))


def find_version_by_tag(
    model_name: str, key: str, value: str, client: MlflowClient | None = None
) -> str | None:
    """The newest version whose tag ``key`` equals ``value`` (e.g. the flow's train key)."""
    client = client or make_client()
    versions = all_versions(client, model_name)
    matches = [mv.version for mv in versions if mv.tags.get(key) == value]
    return str(max(matches, key=int)) if matches else None


def champion_tags(model_name: str, client: MlflowClient | None = None) -> dict[str, str]:
    """Tags of the current champion; empty when there is none yet."""
    client = client or make_client()
    champion = version_by_alias(client, model_name, CHAMPION)
    return dict(champion.tags) if champion is not None else {}
