"""Reviewer reports on the registry: the version list, one version, two versions compared.

Read-only views for ``ratchet registry list|show|compare``: nothing here moves an alias or
writes a tag (those are ``components/registry.py`` and ``components/aliases.py``).
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import numpy as np
from mlflow import MlflowClient
from mlflow.entities.model_registry import ModelVersion

from components import tracking
from components.errors import RegistryError
from components.gate_stats import mcnemar_exact, paired_comparison
from components.model_card import HEADLINE_METRICS
from components.registry import (
    LINEAGE_TAGS,
    LISTED_METRICS,
    TASK_TAG,
    TOKEN_LISTED_METRICS,
    aliases,
    evaluation_run_id,
    get_version,
    load_evaluation,
    make_client,
    score_version,
    version_config_tree,
)


def list_versions(model_name: str, client: MlflowClient | None = None) -> list[dict[str, Any]]:
    """One row per version, newest first: aliases, key metrics, data md5, gate, created,
    task; a token classifier's rows add ``f1`` (entity micro-F1), entity precision and
    recall and word accuracy (its classification metrics are None)."""
    client = client or make_client()
    by_version: dict[str, list[str]] = {}
    for alias, version in aliases(client, model_name).items():
        by_version.setdefault(version, []).append(alias)
    rows = []
    versions = client.search_model_versions(f"name='{model_name}'")
    for model_version in sorted(versions, key=lambda mv: -int(mv.version)):
        tags = model_version.tags
        created = datetime.fromtimestamp(model_version.creation_timestamp / 1000, UTC)
        row: dict[str, Any] = {
            "version": str(model_version.version),
            "aliases": sorted(by_version.get(str(model_version.version), [])),
            "created": created.isoformat(timespec="seconds"),
            "prepared_data_md5": tags.get("prepared_data_md5", ""),
            "gate": tags.get("gate.decision", ""),
            "run_id": model_version.run_id,
            "task": tags.get(TASK_TAG, "text-classification"),
        }
        token = row["task"] == "token-classification"
        for name in LISTED_METRICS + (TOKEN_LISTED_METRICS if token else ()):
            value = tags.get(f"metric.{name}")
            row[name] = None if value is None else float(value)
        rows.append(row)
    return rows


def show_version(
    model_name: str, version: str | int, client: MlflowClient | None = None
) -> dict[str, Any]:
    """A version's card (its description), aliases and tags."""
    client = client or make_client()
    model_version = get_version(client, model_name, version)
    version_aliases = [a for a, v in aliases(client, model_name).items() if v == str(version)]
    return {
        "version": str(model_version.version),
        "aliases": sorted(version_aliases),
        "tags": dict(model_version.tags),
        "model_card": model_version.description or "",
        "run_id": model_version.run_id,
    }


def version_config(client: MlflowClient, model_version: ModelVersion) -> dict[str, Any]:
    """The resolved config recorded with a version, flattened to dotted keys."""
    return tracking.flatten(version_config_tree(client, model_version))


def diff_mappings(left: Mapping[str, Any], right: Mapping[str, Any]) -> list[dict[str, Any]]:
    keys = sorted(set(left) | set(right))
    return [
        {"key": key, "a": left.get(key), "b": right.get(key)}
        for key in keys
        if left.get(key) != right.get(key)
    ]


def refuse_token_versions(model_name: str, versions: tuple[Any, ...]) -> None:
    """`registry compare` compares text classifiers only.

    Raises:
        RegistryError: a version is a token classifier (names ``registry show``).
    """
    for model_version in versions:
        if model_version.tags.get(TASK_TAG) == "token-classification":
            raise RegistryError(
                f"`ratchet registry compare` compares text classifiers; {model_name} "
                f"v{model_version.version} is a token classifier: read each version's entity "
                "scores and gate decision with `ratchet registry show VERSION`"
            )


def compare_versions(
    model_name: str,
    version_a: str | int,
    version_b: str | int,
    significance: float = 0.05,
    batch_size: int = 64,
    client: MlflowClient | None = None,
) -> dict[str, Any]:
    """Metric deltas (B - A), a paired significance test, confusion matrices, lineage diffs.

    Both versions are compared on A's test split; when B was evaluated on another split,
    B is downloaded and re-scored on A's texts with B's own recorded inference settings
    (token window, precision), and ``rescored`` says so. The McNemar p-value is two-sided:
    neither version is the challenger here.
    """
    from sklearn.metrics import confusion_matrix

    client = client or make_client()
    first, second = (
        get_version(client, model_name, version_a),
        get_version(client, model_name, version_b),
    )
    refuse_token_versions(model_name, (first, second))
    metrics_a = tracking.run_metrics(evaluation_run_id(first))
    metrics_b = tracking.run_metrics(evaluation_run_id(second))
    report_a = load_evaluation(client, model_name, str(first.version))
    rescored = report_a.test_split_md5 != second.tags.get("test_split_md5")
    if rescored:
        predicted_b = score_version(client, model_name, second, report_a.texts, batch_size)
    else:
        predicted_b = load_evaluation(client, model_name, str(second.version)).predicted_ids
    comparison = paired_comparison(
        report_a.y_true, predicted_b, report_a.predicted_ids, significance
    )
    p_value = mcnemar_exact(
        np.asarray(predicted_b) == report_a.y_true,
        report_a.predicted_ids == report_a.y_true,
        "two-sided",
    )
    ids = list(range(len(report_a.labels)))
    deltas = {
        name: {
            "a": metrics_a.get(name),
            "b": metrics_b.get(name),
            "delta": metrics_b[name] - metrics_a[name],
        }
        for name in HEADLINE_METRICS
        if name in metrics_a and name in metrics_b
    }
    tracked = [key for key in LINEAGE_TAGS if key not in ("parent_run_id", "flow_run_id")]
    return {
        "a": str(first.version),
        "b": str(second.version),
        "labels": report_a.labels,
        "metrics": deltas,
        "significance": {
            "b_minus_a_accuracy": comparison.difference,
            "mcnemar_p_value": p_value,
            "ci_low": comparison.ci_low,
            "ci_high": comparison.ci_high,
            "confidence_level": comparison.confidence_level,
            "only_b_correct": comparison.challenger_only,
            "only_a_correct": comparison.champion_only,
            "significant": p_value < significance,
            "rescored": rescored,
            "test_examples": len(report_a.y_true),
        },
        "confusion_matrices": {
            "a": confusion_matrix(report_a.y_true, report_a.predicted_ids, labels=ids).tolist(),
            "b": confusion_matrix(report_a.y_true, np.asarray(predicted_b), labels=ids).tolist(),
        },
        "lineage_diff": diff_mappings(
            {k: first.tags.get(k) for k in tracked}, {k: second.tags.get(k) for k in tracked}
        ),
        "config_diff": diff_mappings(version_config(client, first), version_config(client, second)),
    }
