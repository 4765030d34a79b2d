"""The gate's I/O for token classifiers: champions' tags on the challenger's sentences.

The token counterpart of the finding and re-scoring in ``components/promotion.py``, which
calls :func:`gate_tokens_against_champions` for a :class:`TokenEvaluationReport`; the
decision itself is :func:`components.token_gate.compare_entities_to_champion` (pure), and
recording it and moving the aliases stay ``components/promotion.py``'s. A champion's tags
on the test split come from its recorded ``evaluation/predictions.jsonl`` when its split
md5 matches, else it is downloaded and re-scored with its own recorded settings.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from components import registry
from components.behaviour import CheckResult
from components.config import GateConfig
from components.errors import RegistryError
from components.evaluate import EvaluationReport
from components.gate import GateDecision
from components.token_evaluate import (
    EVAL_FILE,
    PREDICTIONS_FILE,
    TokenEvaluationReport,
    TokenTagger,
)
from components.token_gate import compare_entities_to_champion

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from mlflow.entities.model_registry import ModelVersion

Tags = list[list[str]]
TOKEN_TASK = "token-classification"


def is_token_version(model_version: ModelVersion) -> bool:
    return model_version.tags.get(registry.TASK_TAG) == TOKEN_TASK


def read_predictions(path: Path) -> list[dict[str, Any]]:
    lines = path.read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines if line.strip()]


def recorded_tags(client: MlflowClient, model_name: str, version: str) -> Tags | None:
    """The tags a token version predicted on its own test split, if logged."""
    model_version = registry.get_version(client, model_name, version)
    with tempfile.TemporaryDirectory() as tmp:
        path = registry.download_evaluation_file(client, model_version, PREDICTIONS_FILE, Path(tmp))
        return None if path is None else [row["predicted"] for row in read_predictions(path)]


def score_token_version(
    client: MlflowClient, model_name: str, model_version: ModelVersion, sentences: Tags, batch: int
) -> Tags:
    """A token version's tags on ``sentences``, with its own recorded settings."""
    max_length, precision = registry.recorded_inference_settings(model_version.tags)
    with tempfile.TemporaryDirectory() as tmp:
        folder = registry.download_version(
            client, model_name, str(model_version.version), Path(tmp)
        )
        return TokenTagger(folder, max_length, precision).tag(sentences, batch)


def champion_tags_on(
    client: MlflowClient,
    model_name: str,
    champion_version: str,
    report: TokenEvaluationReport,
    batch_size: int,
) -> tuple[Tags, bool, str]:
    """The champion's tags on the challenger's test sentences: recorded when its split
    md5 matches, else re-scored. Returns (tags, whether re-scored, a note saying why)."""
    champion = registry.get_version(client, model_name, champion_version)
    champion_md5 = champion.tags.get("test_split_md5")
    recorded = recorded_tags(client, model_name, champion_version)
    if recorded is not None and champion_md5 == report.test_split_md5:
        return recorded, False, "champion scored on the same test split"
    max_length, precision = registry.recorded_inference_settings(champion.tags)
    window = "its tokenizer's window" if max_length is None else f"max_length {max_length}"
    note = (
        f"test split changed (champion md5 {champion_md5}, challenger md5 "
        f"{report.test_split_md5}): champion v{champion_version} re-scored on the "
        f"challenger's {len(report.tokens)} test sentences with its own settings "
        f"({window}, {precision})"
    )
    return score_token_version(client, model_name, champion, report.tokens, batch_size), True, note


def best_champion_tags(
    client: MlflowClient, model_name: str, report: TokenEvaluationReport, metric: str
) -> tuple[str | None, Tags | None]:
    """The best former champion on the challenger's test split and its recorded tags."""
    best = registry.best_former_champion(
        client, model_name, report.test_split_md5, metric, list(report.labels)
    )
    if best is None:
        return None, None
    recorded = recorded_tags(client, model_name, str(best.version))
    if recorded is None or len(recorded) != len(report.gold):
        return None, None
    return str(best.version), recorded


def gate_tokens_against_champions(
    client: MlflowClient,
    model_name: str,
    challenger_version: str,
    report: TokenEvaluationReport,
    gate_cfg: GateConfig,
    batch_size: int,
    champion_version: str | None,
) -> GateDecision:
    """The gate's decision on a registered token classifier against ``champion_version``
    (None: none yet) and the best former champion; a champion with another tag set is
    not compared, and the challenger is rejected (a reviewer may force it)."""
    contender = champion_version is not None and champion_version != challenger_version
    champion_labels = None
    if contender:
        champion = registry.get_version(client, model_name, str(champion_version))
        champion_labels = json.loads(champion.tags.get("labels", "null"))
    best_version, best = best_champion_tags(client, model_name, report, gate_cfg.metric)
    champion_pred, rescored, note = None, False, ""
    labels_differ = champion_labels is not None and champion_labels != list(report.labels)
    if contender and not labels_differ:
        champion_pred, rescored, note = champion_tags_on(
            client, model_name, str(champion_version), report, batch_size
        )
    decision = compare_entities_to_champion(
        report.gold,
        report.predicted,
        champion_pred,
        gate_cfg,
        report.behaviour,
        champion_version=champion_version,
        best_champion=best,
        best_champion_version=best_version,
    )
    if labels_differ:
        decision = replace(
            decision,
            promote=False,
            reason=f"its tags {list(report.labels)} differ from champion v{champion_version}'s "
            f"{champion_labels}, so the two cannot be compared; a reviewer may promote it "
            "with --force",
            failed_conditions=["labels differ from the champion's"],
            champion_version=champion_version,
        )
    return replace(
        decision,
        champion_rescored=rescored,
        rescore_note=note,
        challenger_version=challenger_version,
        test_split_md5=report.test_split_md5,
    )


def load_token_evaluation(
    client: MlflowClient, model_name: str, version: str | int
) -> TokenEvaluationReport:
    """Rebuild a token version's evaluation from its logged ``eval.json`` and predictions.

    Raises:
        RegistryError: the version has no logged evaluation.
    """
    model_version = registry.get_version(client, model_name, version)
    with tempfile.TemporaryDirectory() as tmp:
        files = {
            name: registry.download_evaluation_file(client, model_version, name, Path(tmp))
            for name in (EVAL_FILE, PREDICTIONS_FILE)
        }
        if None in files.values():
            raise RegistryError(f"{model_name} v{version} has no logged evaluation to gate on")
        summary = json.loads(Path(str(files[EVAL_FILE])).read_text(encoding="utf-8"))
        rows = read_predictions(Path(str(files[PREDICTIONS_FILE])))
    return TokenEvaluationReport(
        metrics=dict(summary["metrics"]),
        labels=list(summary["labels"]),
        gold=[row["tags"] for row in rows],
        predicted=[row["predicted"] for row in rows],
        test_split_md5=summary["test_split_md5"],
        tokens=[row["tokens"] for row in rows],
        behaviour=[CheckResult.from_dict(item) for item in summary.get("behaviour", [])],
    )


def load_any_evaluation(
    client: MlflowClient, model_name: str, version: str | int
) -> EvaluationReport | TokenEvaluationReport:
    """A version's logged evaluation, of either task (its ``task`` tag decides)."""
    if is_token_version(registry.get_version(client, model_name, version)):
        return load_token_evaluation(client, model_name, version)
    return registry.load_evaluation(client, model_name, version)
