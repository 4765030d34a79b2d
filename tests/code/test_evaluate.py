"""Evaluation metrics, slices, plots and the report written by ``evaluate_model``."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from components.behaviour import BehaviourSuite
from components.config import EvalConfig
from components.evaluate import (
    classification_metrics,
    confident_mistakes,
    evaluate_model,
    expected_calibration_error,
    fingerprint_split,
    length_bucket_names,
    metric_key,
    score_texts,
    slice_table,
)
from tests.conftest import prepared_split

LABELS = ["negative", "positive"]


def test_expected_calibration_error_by_hand() -> None:
    y_true = np.array([1, 1, 0, 0])
    probabilities = np.array([[0.1, 0.9], [0.1, 0.9], [0.4, 0.6], [0.8, 0.2]])
    # One bin above 0.5: accuracy 3/4, mean confidence 0.8.
    assert expected_calibration_error(y_true, probabilities, bins=2) == pytest.approx(0.05)
    # Bins of 0.2: {0.6} wrong, {0.8} right, {0.9, 0.9} right.
    expected = 0.25 * 0.6 + 0.25 * 0.2 + 0.5 * 0.1
    assert expected_calibration_error(y_true, probabilities, bins=5) == pytest.approx(expected)


def test_classification_metrics_match_known_values() -> None:
    y_true = np.array([0, 0, 1, 1])
    probabilities = np.array([[0.9, 0.1], [0.4, 0.6], [0.3, 0.7], [0.2, 0.8]])
    metrics = classification_metrics(y_true, probabilities, LABELS, calibration_bins=10)
    assert metrics["accuracy"] == 0.75
    assert metrics["precision.positive"] == pytest.approx(2 / 3)
    assert metrics["recall.negative"] == 0.5
    assert metrics["f1_macro"] == pytest.approx((2 / 3 + 0.8) / 2)
    assert metrics["roc_auc"] == 1.0  # every positive outscores every negative
    assert metrics["support.positive"] == 2
    assert metrics["log_loss"] == pytest.approx(-np.mean(np.log([0.9, 0.4, 0.7, 0.8])), rel=1e-6)


def test_multiclass_auc_is_one_vs_rest_and_absent_classes_skip_it() -> None:
    y_true = np.array([0, 1, 2, 2])
    probabilities = np.eye(3)[[0, 1, 2, 2]] * 0.7 + 0.1
    metrics = classification_metrics(y_true, probabilities, ["a", "b", "c"], 10)
    assert metrics["roc_auc"] == 1.0
    absent = classification_metrics(np.array([0, 0, 1]), np.eye(3)[[0, 0, 1]], ["a", "b", "c"], 10)
    assert "roc_auc" not in absent


def test_length_buckets_and_slice_columns() -> None:
    assert list(length_bucket_names(np.array([1, 10, 11, 40, 41]), [10, 20, 40])) == [
        "words_0-10",
        "words_0-10",
        "words_11-20",
        "words_21-40",
        "words_41_plus",
    ]
    test = pd.DataFrame(
        {
            "text": ["good", "bad film here", "fine"],
            "label": [1, 0, 1],
            "label_name": ["positive", "negative", "positive"],
            "genre": ["drama", "comedy", "drama"],
        }
    )
    table = slice_table(test, np.array([1, 1, 1]), LABELS, [2])
    rows = {(r.slice, r.value): (r.examples, r.accuracy) for r in table.itertuples()}
    assert rows == {
        ("length", "words_0-2"): (2, 1.0),
        ("length", "words_3_plus"): (1, 0.0),
        ("genre", "comedy"): (1, 0.0),
        ("genre", "drama"): (2, 1.0),
    }


def test_confident_mistakes_sorted_by_confidence() -> None:
    test = pd.DataFrame({"text": ["a", "b", "c", "d"], "label": [0, 0, 1, 1]})
    probabilities = np.array([[0.2, 0.8], [0.4, 0.6], [0.1, 0.9], [0.95, 0.05]])
    mistakes = confident_mistakes(test, probabilities, LABELS, top=5)
    assert mistakes["text"].tolist() == ["d", "a", "b"]
    assert mistakes["confidence"].tolist() == [0.95, 0.8, 0.6]
    assert confident_mistakes(test, probabilities, LABELS, top=1)["text"].tolist() == ["d"]


def test_metric_key_replaces_characters_mlflow_refuses() -> None:
    assert metric_key("sci-fi & fantasy (US)") == "sci-fi _ fantasy _US_"


def test_split_md5_depends_on_texts_labels_and_order() -> None:
    test = prepared_split(6)
    assert fingerprint_split(test) == fingerprint_split(test.copy())
    assert fingerprint_split(test) != fingerprint_split(test.iloc[::-1])
    relabelled = test.assign(label=1 - test["label"])
    assert fingerprint_split(test) != fingerprint_split(relabelled)


@pytest.mark.slow
def test_evaluate_model_writes_report(tiny_classifiers: dict, tmp_path: Path) -> None:
    test = prepared_split(60, seed=5)
    test["source"] = ["imdb", "rt"] * 30
    suite = BehaviourSuite.model_validate(
        {
            "labels": LABELS,
            "checks": [
                {
                    "name": "mft_pos",
                    "type": "MFT",
                    "expect_label": "positive",
                    "texts": ["the movie was great", "the plot was superb"],
                },
                {
                    "name": "inv_num",
                    "type": "INV",
                    # The model reads the polar word: the number keeps the label, a new
                    # polar word flips it.
                    "pairs": [
                        ["a dull film 1", "a dull film 2"],
                        ["the plot was dull number 3", "the plot was great number 3"],
                    ],
                },
            ],
        }
    )
    config = EvalConfig(latency_samples=3, top_mistakes=5, batch_size=16)
    report = evaluate_model(tiny_classifiers["good"], test, LABELS, config, tmp_path, suite)

    assert report.accuracy >= 0.9
    assert report.texts == test["text"].tolist()
    assert report.predicted_ids.tolist() == report.probabilities.argmax(axis=1).tolist()
    assert report.test_split_md5 == fingerprint_split(test)
    for key in ("f1_macro", "roc_auc", "ece", "latency_p99_ms_batch1", "slice.source.rt.accuracy"):
        assert key in report.metrics
    assert report.metrics["throughput_texts_per_s_batch32"] > 0
    assert [result.name for result in report.behaviour] == ["mft_pos", "inv_num"]
    assert report.metrics["behaviour.mft_pos.pass_rate"] == 1.0
    assert report.metrics["behaviour.inv_num.pass_rate"] == 0.5
    assert [failure["original"] for failure in report.behaviour[1].failures] == [
        "the plot was dull number 3"
    ]
    for name in ("confusion_matrix.png", "reliability_diagram.png", "confident_mistakes.csv"):
        assert report.artifacts[name].stat().st_size > 0
    assert (tmp_path / "confusion_matrix.png").read_bytes()[:4] == b"\x89PNG"
    written = json.loads((tmp_path / "eval.json").read_text())
    assert written["metrics"]["accuracy"] == report.accuracy
    again = score_texts(tiny_classifiers["good"], report.texts, batch_size=7)
    np.testing.assert_allclose(again, report.probabilities, atol=1e-5)


@pytest.mark.slow
def test_evaluate_model_refuses_other_labels(tiny_classifiers: dict, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"model labels \['negative', 'positive'\] differ"):
        evaluate_model(
            tiny_classifiers["good"], prepared_split(4), ["neg", "pos"], EvalConfig(), tmp_path
        )


def test_models_are_scored_at_the_serving_precision(
    tiny_classifiers: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    """bf16 (serving.precision) scores under bf16 autocast, as the Bento does, and falls
    back to fp32 on a CPU without native bf16, as the Bento does."""
    from components import hardware
    from components.evaluate import TextClassifier

    texts = prepared_split(16, seed=2)["text"].tolist()
    monkeypatch.setattr(hardware, "cpu_has_native_bf16", lambda: False)
    assert TextClassifier.load(tiny_classifiers["good"], precision="bf16").precision == "fp32"
    monkeypatch.setattr(hardware, "cpu_has_native_bf16", lambda: True)
    bf16 = TextClassifier.load(tiny_classifiers["good"], precision="bf16")
    assert bf16.precision == "bf16"
    fp32 = TextClassifier.load(tiny_classifiers["good"]).predict_proba(texts)
    scored = bf16.predict_proba(texts)
    assert not np.array_equal(scored, fp32)
    assert np.allclose(scored, fp32, atol=0.05)
