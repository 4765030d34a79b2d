"""A nightly schedule against a real MLflow store: the gate cannot slide, and a constant
predictor is never promoted.

Each version is one tiny model folder, logged once and registered again for every retrain,
with a crafted evaluation (per-example predictions on a fixed 872-example test split), so
the sequence of challengers is exactly the one the scenario needs and costs no training.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from mlflow import MlflowClient
from sklearn.metrics import f1_score

from components import registry, registry_reports, tracking
from components.config import GateConfig, RatchetConfig
from components.evaluate import (
    EVAL_FILE,
    PREDICTIONS_FILE,
    EvaluationReport,
    classification_metrics,
    fingerprint_split,
    predictions_frame,
)
from components.gate import GateDecision
from components.mlflow_model import log_classifier_model
from components.promotion import apply_gate
from components.state import ProjectPaths
from tests.conftest import PROJECT_ROOT

pytestmark = pytest.mark.slow

LABELS = ["negative", "positive"]
TEST_EXAMPLES = 872
LINEAGE = {"git_commit": "0123abcd", "prepared_data_md5": "bbbb.dir"}


def crafted_report(
    y_true: np.ndarray, predicted: np.ndarray, folder: Path, texts: list[str] | None = None
) -> EvaluationReport:
    """An evaluation with these predictions on a fixed test split, its files on disk."""
    probabilities = np.full((len(y_true), len(LABELS)), 0.1)
    probabilities[np.arange(len(y_true)), predicted] = 0.9
    texts = texts or [f"test review number {index}" for index in range(len(y_true))]
    test = pd.DataFrame({"text": texts, "label": y_true})
    folder.mkdir(parents=True)
    predictions_frame(texts, y_true, probabilities, LABELS).to_parquet(
        folder / PREDICTIONS_FILE, index=False
    )
    report = EvaluationReport(
        metrics=classification_metrics(y_true, probabilities, LABELS, 10),
        labels=LABELS,
        y_true=y_true,
        predicted_ids=predicted,
        probabilities=probabilities,
        test_split_md5=fingerprint_split(test),
        texts=texts,
        artifacts={PREDICTIONS_FILE: folder / PREDICTIONS_FILE},
    )
    (folder / EVAL_FILE).write_text(json.dumps(report.summary()), encoding="utf-8")
    report.artifacts[EVAL_FILE] = folder / EVAL_FILE
    return report


@pytest.fixture
def nightly(
    tiny_config: RatchetConfig, state_dir: Path, tiny_classifiers: dict[str, Path]
) -> tuple[RatchetConfig, str]:
    """The default gate, tracking in the isolated state folder, and one logged model."""
    config = tiny_config.model_copy(update={"gate": GateConfig()})
    tracking.setup_tracking(config, ProjectPaths.discover(PROJECT_ROOT))
    with tracking.parent_run(config, run_name="model"):
        model_uri = log_classifier_model(tiny_classifiers["good"]).model_uri
    return config, model_uri


def retrain(
    config: RatchetConfig, model_uri: str, report: EvaluationReport, model_name: str
) -> tuple[str, GateDecision]:
    """What one nightly run does after training: register the challenger, gate it."""
    with tracking.parent_run(config, run_name="nightly"), tracking.stage_run("evaluate") as run:
        version = registry.register_challenger(
            model_name, model_uri, report, LINEAGE, config, run.info.run_id
        )
    decision = apply_gate(model_name, str(version.version), report, config.gate)
    return str(version.version), decision


def slightly_worse(y_true: np.ndarray, predicted: np.ndarray) -> np.ndarray:
    """10 new errors and 6 fixed ones: 4 of 872 worse, and not significantly so."""
    worse = predicted.copy()
    broken = np.flatnonzero(worse == y_true)[-10:]
    fixed = np.flatnonzero(worse != y_true)[:6]
    worse[broken] = 1 - y_true[broken]
    worse[fixed] = y_true[fixed]
    return worse


def test_a_series_of_slightly_worse_challengers_cannot_slide(
    nightly: tuple[RatchetConfig, str], tmp_path: Path
) -> None:
    config, model_uri = nightly
    name, tolerance = "nightly-slide", config.gate.tolerance
    y_true = np.array([0, 1] * (TEST_EXAMPLES // 2))
    predicted = y_true.copy()
    predicted[:87] = 1 - y_true[:87]  # the first champion: 0.900
    history = []
    for step in range(6):
        if step:
            previous = predicted
            predicted = slightly_worse(y_true, predicted)
            drop = f1_score(y_true, previous, average="macro") - f1_score(
                y_true, predicted, average="macro"
            )
            assert 0 < drop < tolerance  # each step alone is within the tolerance
        report = crafted_report(y_true, predicted, tmp_path / f"eval-{step}")
        history.append((retrain(config, model_uri, report, name), report))

    outcomes = [decision.outcome for (_, decision), _ in history]
    assert outcomes == ["promoted", "promoted"] + ["rejected"] * 4
    client = MlflowClient()
    champion = registry.version_by_alias(client, name, registry.CHAMPION)
    assert champion is not None and str(champion.version) == "2"
    best = max(float(report.metrics["f1_macro"]) for _, report in history)
    assert float(champion.tags["metric.f1_macro"]) >= best - tolerance

    (_, third), _ = history[2]
    assert third.comparison is not None and third.best_comparison is not None
    assert -tolerance < third.comparison.metric_difference < 0  # fine vs the current one
    assert third.failed_conditions == [
        f"f1_macro {third.challenger_metric:.4f} is "
        f"{-third.best_comparison.metric_difference:.4f} below the best champion v1 on this "
        f"test split's {third.best_comparison.champion_metric:.4f} (tolerance {tolerance})"
    ]
    tags = registry.version_tags(client, name, "3")
    assert tags["gate.best_champion_version"] == "1"
    assert tags["gate.champion_version"] == "2"
    assert tags["gate.test_split_md5"] == history[2][1].test_split_md5
    assert tags["gate.metric"] == "f1_macro"
    assert "champion.held" not in tags
    assert registry.version_tags(client, name, "1")["champion.held"] == "true"
    assert registry.version_tags(client, name, "2")["champion.held"] == "true"
    card = client.get_model_version(name, "3").description
    assert "| current champion | v2 |" in card
    assert "| best champion on this test split | v1 |" in card
    saved = tracking.download_run_artifact(
        registry.evaluation_run_id(client.get_model_version(name, "3")), "gate/decision-v3.json"
    )
    assert '"best_champion_version": "1"' in saved.read_text()

    # A constant predictor, with a champion in place, is never promoted.
    constant = crafted_report(y_true, np.ones_like(y_true), tmp_path / "constant")
    (_, decision) = retrain(config, model_uri, constant, name)
    assert not decision.promote
    assert "recall of class 'negative' 0.0000 is below gate.min_class_recall=0.05" in (
        decision.failed_conditions
    )
    assert registry.aliases(client, name)["champion"] == "2"


def test_a_constant_predictor_is_never_the_first_champion(
    nightly: tuple[RatchetConfig, str], tmp_path: Path
) -> None:
    config, model_uri = nightly
    y_true = np.array([1] * 785 + [0] * 87)  # 90% positive
    report = crafted_report(y_true, np.ones_like(y_true), tmp_path / "constant")
    assert report.accuracy == pytest.approx(0.9002, abs=1e-4)
    version, decision = retrain(config, model_uri, report, "nightly-constant")
    assert not decision.promote
    assert decision.champion_version is None and decision.best_champion_version is None
    assert registry.aliases(MlflowClient(), "nightly-constant") == {"challenger": version}


def test_a_champion_is_rescored_with_its_own_inference_settings(
    nightly: tuple[RatchetConfig, str],
    tiny_classifiers: dict[str, Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The champion was registered to be served with an 8-token window; on a new test split
    it is re-scored with that window, not the challenger's 32, and so is `compare`."""
    from components import evaluate

    config, model_uri = nightly
    name = "like-for-like"
    short = config.model_copy(update={"model": config.model.model_copy(update={"max_length": 8})})
    y_first = np.array([0, 1] * 60)
    first = retrain(short, model_uri, crafted_report(y_first, y_first, tmp_path / "first"), name)
    assert first[1].promote, first[1].reason
    tags = registry.version_tags(MlflowClient(), name, "1")
    assert (tags["inference.max_length"], tags["inference.precision"]) == ("8", "fp32")
    assert tags["inference.runtime"] == "torch"

    score_texts = evaluate.score_texts
    settings: list[tuple[int | None, str]] = []

    def spy(model_dir: Path, texts: list[str], batch_size: int, *args: object) -> np.ndarray:
        settings.append(args)  # (max_length, precision)
        return score_texts(model_dir, texts, batch_size, *args)

    monkeypatch.setattr(evaluate, "score_texts", spy)
    words = {0: "awful", 1: "superb"}
    y_true = np.array([0, 1] * 60)
    texts = [f"the movie was {words[label]} number {i}" for i, label in enumerate(y_true)]
    worse = y_true.copy()
    worse[:30] = 1 - worse[:30]
    _, decision = retrain(
        config, model_uri, crafted_report(y_true, worse, tmp_path / "b", texts), name
    )

    assert settings == [(8, "fp32")]
    assert decision.champion_rescored
    assert decision.rescore_note.endswith("with its own settings (max_length 8, fp32)")
    champion_ids = score_texts(tiny_classifiers["good"], texts, 32, 8).argmax(axis=1)
    assert decision.comparison is not None
    assert decision.comparison.champion_accuracy == pytest.approx((champion_ids == y_true).mean())
    compared = registry_reports.compare_versions(name, "2", "1")
    assert settings == [(8, "fp32")] * 2
    assert compared["significance"]["rescored"]
    assert compared["significance"]["b_minus_a_accuracy"] == pytest.approx(
        (champion_ids == y_true).mean() - 0.75
    )
