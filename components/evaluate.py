"""Evaluate a fine-tuned classifier on the frozen test split.

    ratchet evaluate            # models/finetuned + data/prepared -> metrics/eval.json + plots

:func:`evaluate_model` scores the test split once and returns an :class:`EvaluationReport`:
flat metrics (accuracy, macro/weighted F1, per-class precision/recall/F1, ROC-AUC, log-loss,
expected calibration error, per-slice metrics, latency and throughput, behavioural pass
rates), the per-example predictions the promotion gate pairs up, and the paths of the files
it wrote (confusion matrix and reliability diagram PNGs, slice and mistake tables). Metrics
come from scikit-learn; only the calibration error is computed here, as it has no library
implementation there. Nothing here talks to MLflow: the flow logs the report.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sklearn import metrics as skm

from components.behaviour import (
    BehaviourSuite,
    CheckResult,
    behaviour_metrics,
    run_behaviour_suite,
)
from components.config import EvalConfig
from components.evaluation_plots import plot_confusion_matrix, plot_reliability_diagram
from components.inference import Classifier, load_classifier, predict_proba
from components.inference import score_texts as score_texts  # the gate re-scores through it
from components.monitoring_reference import write_reference

TEXT_COLUMN = "text"
LABEL_COLUMN = "label"
RESERVED_COLUMNS = {TEXT_COLUMN, LABEL_COLUMN, "label_name"}
MAX_SLICE_VALUES = 50
THROUGHPUT_BATCH = 32
# Evaluation scores through the one inference module; these names stay importable here.
TextClassifier = Classifier
EVAL_FILE = "eval.json"
PREDICTIONS_FILE = "predictions.parquet"


def fingerprint_split(test: pd.DataFrame) -> str:
    """Fingerprint of the labelled test texts, in order: equal md5, same paired comparison."""
    digest = hashlib.md5()
    for text, label in zip(test[TEXT_COLUMN], test[LABEL_COLUMN], strict=True):
        digest.update(f"{int(label)}\t{text}\n".encode())
    return digest.hexdigest()


def metric_key(name: str) -> str:
    """A name MLflow accepts as a metric key (letters, digits, ``_-. /``)."""
    return re.sub(r"[^A-Za-z0-9_\-. /]", "_", str(name))


def expected_calibration_error(
    y_true: np.ndarray, probabilities: np.ndarray, bins: int = 10
) -> float:
    """Top-label ECE: bin by confidence, weight |accuracy - confidence| by bin share.

    scikit-learn has no ECE (``calibration_curve`` drops bin sizes), so it is computed here.
    """
    confidence = probabilities.max(axis=1)
    correct = probabilities.argmax(axis=1) == y_true
    edges = np.linspace(0.0, 1.0, bins + 1)
    bin_ids = np.clip(np.digitize(confidence, edges[1:-1], right=True), 0, bins - 1)
    error = 0.0
    for bin_id in range(bins):
        members = bin_ids == bin_id
        if members.any():
            gap = abs(correct[members].mean() - confidence[members].mean())
            error += members.mean() * gap
    return float(error)


def roc_auc(y_true: np.ndarray, probabilities: np.ndarray) -> float | None:
    """Binary ROC-AUC, or macro one-vs-rest AUC; None when a class is absent from y_true."""
    classes = probabilities.shape[1]
    if len(np.unique(y_true)) < classes:
        return None
    if classes == 2:
        return float(skm.roc_auc_score(y_true, probabilities[:, 1]))
    return float(
        skm.roc_auc_score(
            y_true, probabilities, multi_class="ovr", average="macro", labels=list(range(classes))
        )
    )


def classification_metrics(
    y_true: np.ndarray, probabilities: np.ndarray, labels: Sequence[str], calibration_bins: int
) -> dict[str, float]:
    """Headline and per-class metrics as a flat dict (keys are MLflow metric keys)."""
    ids = list(range(len(labels)))
    y_pred = probabilities.argmax(axis=1)
    metrics: dict[str, float] = {
        "accuracy": float(skm.accuracy_score(y_true, y_pred)),
        "f1_macro": float(
            skm.f1_score(y_true, y_pred, average="macro", labels=ids, zero_division=0)
        ),
        "f1_weighted": float(
            skm.f1_score(y_true, y_pred, average="weighted", labels=ids, zero_division=0)
        ),
        "log_loss": float(skm.log_loss(y_true, probabilities, labels=ids)),
        "ece": expected_calibration_error(y_true, probabilities, calibration_bins),
        "test_examples": float(len(y_true)),
    }
    auc = roc_auc(y_true, probabilities)
    if auc is not None:
        metrics["roc_auc"] = auc
    precision, recall, f1, support = skm.precision_recall_fscore_support(
        y_true, y_pred, labels=ids, zero_division=0
    )
    for index, name in enumerate(labels):
        key = metric_key(name)
        metrics[f"precision.{key}"] = float(precision[index])
        metrics[f"recall.{key}"] = float(recall[index])
        metrics[f"f1.{key}"] = float(f1[index])
        metrics[f"support.{key}"] = float(support[index])
    return metrics


def length_bucket_names(word_counts: np.ndarray, edges: Sequence[int]) -> np.ndarray:
    """Word-count bucket per text: ``words_0-10``, ``words_11-20``, ..., ``words_41_plus``."""
    names, low = [], 0
    for edge in edges:
        names.append(f"words_{low}-{edge}")
        low = edge + 1
    names.append(f"words_{low}_plus")
    return np.array(names)[np.searchsorted(np.asarray(edges), word_counts, side="left")]


def slice_table(
    test: pd.DataFrame,
    y_pred: np.ndarray,
    labels: Sequence[str],
    length_edges: Sequence[int],
    truncated: np.ndarray | None = None,
) -> pd.DataFrame:
    """Accuracy and macro F1 per slice: length buckets, truncated or not (when
    ``truncated`` flags the texts longer than the token window), then every extra column
    of ``test``."""
    y_true = test[LABEL_COLUMN].to_numpy()
    word_counts = test[TEXT_COLUMN].astype(str).str.split().str.len().to_numpy()
    groupings = {"length": length_bucket_names(word_counts, length_edges)}
    if truncated is not None:
        groupings["truncated"] = np.where(truncated, "true", "false")
    for column in test.columns:
        if column not in RESERVED_COLUMNS and test[column].nunique() <= MAX_SLICE_VALUES:
            groupings[column] = test[column].astype(str).to_numpy()
    rows = []
    ids = list(range(len(labels)))
    for slice_name, values in groupings.items():
        for value in sorted(set(values)):
            members = values == value
            rows.append(
                {
                    "slice": slice_name,
                    "value": value,
                    "examples": int(members.sum()),
                    "accuracy": float(skm.accuracy_score(y_true[members], y_pred[members])),
                    "f1_macro": float(
                        skm.f1_score(
                            y_true[members],
                            y_pred[members],
                            average="macro",
                            labels=ids,
                            zero_division=0,
                        )
                    ),
                }
            )
    return pd.DataFrame(rows)


def slice_metrics(table: pd.DataFrame) -> dict[str, float]:
    flat = {}
    for row in table.itertuples():
        prefix = f"slice.{metric_key(row.slice)}.{metric_key(row.value)}"
        flat[f"{prefix}.accuracy"] = float(row.accuracy)
        flat[f"{prefix}.examples"] = float(row.examples)
    return flat


def confident_mistakes(
    test: pd.DataFrame, probabilities: np.ndarray, labels: Sequence[str], top: int
) -> pd.DataFrame:
    """The ``top`` wrong predictions made with the highest confidence."""
    y_true = test[LABEL_COLUMN].to_numpy()
    y_pred = probabilities.argmax(axis=1)
    wrong = np.flatnonzero(y_pred != y_true)
    confidence = probabilities.max(axis=1)
    chosen = wrong[np.argsort(-confidence[wrong], kind="stable")][:top]
    return pd.DataFrame(
        {
            "text": test[TEXT_COLUMN].to_numpy()[chosen],
            "true_label": [labels[i] for i in y_true[chosen]],
            "predicted_label": [labels[i] for i in y_pred[chosen]],
            "confidence": confidence[chosen],
        }
    )


def measure_latency(classifier: Classifier, texts: Sequence[str], samples: int) -> dict[str, float]:
    """p50/p99 latency of single-text calls and throughput at batch 32 (tokenising included)."""
    texts = [str(text) for text in texts] or ["a film"]
    classifier.predict_proba(texts[:1], 1)  # warm-up: first call pays allocator costs
    timings = []
    for index in range(samples):
        started = time.perf_counter()
        classifier.predict_proba([texts[index % len(texts)]], 1)
        timings.append((time.perf_counter() - started) * 1000.0)
    batch = [texts[i % len(texts)] for i in range(max(THROUGHPUT_BATCH, min(len(texts), 256)))]
    started = time.perf_counter()
    classifier.predict_proba(batch, THROUGHPUT_BATCH)
    elapsed = time.perf_counter() - started
    return {
        "latency_p50_ms_batch1": float(np.percentile(timings, 50)),
        "latency_p99_ms_batch1": float(np.percentile(timings, 99)),
        "throughput_texts_per_s_batch32": float(len(batch) / elapsed),
    }


@dataclass(frozen=True)
class EvaluationReport:
    """Everything one evaluation produced.

    Attributes:
        metrics: flat ``name -> value`` dict, ready for ``mlflow.log_metrics``.
        labels: class names in id order.
        y_true, predicted_ids, probabilities: per test example, in test-split order.
        test_split_md5: fingerprint of the test texts and labels (see :func:`fingerprint_split`).
        texts: the test texts, in order (a champion is re-scored on them).
        behaviour: one result per behavioural check (empty when none were run).
        artifacts: name -> path of each file written into the output folder.
    """

    metrics: dict[str, float]
    labels: list[str]
    y_true: np.ndarray
    predicted_ids: np.ndarray
    probabilities: np.ndarray
    test_split_md5: str
    texts: list[str] = field(default_factory=list)
    behaviour: list[CheckResult] = field(default_factory=list)
    artifacts: dict[str, Path] = field(default_factory=dict)

    @property
    def accuracy(self) -> float:
        return self.metrics["accuracy"]

    @property
    def output_dir(self) -> Path:
        return self.artifacts[EVAL_FILE].parent

    def summary(self) -> dict[str, Any]:
        """The JSON written as ``eval.json``."""
        return {
            "metrics": self.metrics,
            "labels": self.labels,
            "test_split_md5": self.test_split_md5,
            "behaviour": [result.to_dict() for result in self.behaviour],
        }


def predictions_frame(
    texts: Sequence[str], y_true: np.ndarray, probabilities: np.ndarray, labels: Sequence[str]
) -> pd.DataFrame:
    frame = pd.DataFrame(
        {
            TEXT_COLUMN: list(texts),
            LABEL_COLUMN: y_true.astype("int64"),
            "predicted": probabilities.argmax(axis=1).astype("int64"),
        }
    )
    for index, name in enumerate(labels):
        frame[f"prob_{name}"] = probabilities[:, index]
    return frame


def write_report_files(
    test: pd.DataFrame,
    probabilities: np.ndarray,
    labels: list[str],
    metrics: dict[str, float],
    slices: pd.DataFrame,
    eval_cfg: EvalConfig,
    output_dir: Path,
) -> dict[str, Path]:
    """Write plots and tables next to each other; returns name -> path."""
    y_true = test[LABEL_COLUMN].to_numpy()
    matrix = skm.confusion_matrix(
        y_true, probabilities.argmax(axis=1), labels=list(range(len(labels)))
    )
    artifacts = {
        "confusion_matrix.png": plot_confusion_matrix(
            matrix, labels, output_dir / "confusion_matrix.png"
        ),
        "reliability_diagram.png": plot_reliability_diagram(
            y_true,
            probabilities,
            eval_cfg.calibration_bins,
            metrics["ece"],
            output_dir / "reliability_diagram.png",
        ),
    }
    tables = {
        "slices.csv": slices,
        "confident_mistakes.csv": confident_mistakes(
            test, probabilities, labels, eval_cfg.top_mistakes
        ),
        "confusion_matrix.csv": pd.DataFrame(matrix, index=labels, columns=labels),
    }
    for name, table in tables.items():
        table.to_csv(output_dir / name, index=name == "confusion_matrix.csv")
        artifacts[name] = output_dir / name
    predictions = predictions_frame(test[TEXT_COLUMN].astype(str), y_true, probabilities, labels)
    predictions.to_parquet(output_dir / PREDICTIONS_FILE, index=False)
    artifacts[PREDICTIONS_FILE] = output_dir / PREDICTIONS_FILE
    return artifacts


def evaluate_model(
    model_dir: Path,
    test: pd.DataFrame,
    labels: list[str],
    eval_cfg: EvalConfig,
    output_dir: Path,
    behaviour_cases: BehaviourSuite | None = None,
    max_length: int | None = None,
    precision: str = "fp32",
) -> EvaluationReport:
    """Score ``test`` with the model in ``model_dir`` and write the evaluation files.

    Args:
        model_dir: a Hugging Face sequence-classification folder.
        test: the frozen test split (``text``, ``label`` ids; extra columns become slices).
        labels: class names in id order; must match the model's ``id2label``.
        eval_cfg: batch size, length buckets, latency samples, mistakes kept, bins.
        output_dir: where ``eval.json``, PNGs and tables are written (created).
        behaviour_cases: a loaded CheckList-style suite, or None to skip.
        max_length: token window (``model.max_length``); None uses the model's limit.
        precision: ``serving.precision``, so the model is scored as it will be served.

    Returns:
        The report; ``report.artifacts`` maps file names to the files written.
    """
    classifier = load_classifier(model_dir, precision, max_length)
    if classifier.labels != list(labels):
        raise ValueError(f"model labels {classifier.labels} differ from data labels {labels}")
    output_dir.mkdir(parents=True, exist_ok=True)
    texts = test[TEXT_COLUMN].astype(str).tolist()
    y_true = test[LABEL_COLUMN].to_numpy().astype("int64")
    probabilities, truncated = predict_proba(classifier, texts, eval_cfg.batch_size)
    y_pred = probabilities.argmax(axis=1)

    metrics = classification_metrics(y_true, probabilities, labels, eval_cfg.calibration_bins)
    metrics["truncated_fraction"] = float(truncated.mean()) if len(texts) else 0.0
    slices = slice_table(test, y_pred, labels, eval_cfg.length_buckets, truncated)
    metrics.update(slice_metrics(slices))
    metrics.update(measure_latency(classifier, texts, eval_cfg.latency_samples))
    behaviour: list[CheckResult] = []
    if behaviour_cases is not None:

        def predict(batch: list[str]) -> np.ndarray:
            return classifier.predict_proba(batch, eval_cfg.batch_size)

        behaviour = run_behaviour_suite(behaviour_cases, predict, labels)
        metrics.update(behaviour_metrics(behaviour))

    artifacts = write_report_files(
        test, probabilities, labels, metrics, slices, eval_cfg, output_dir
    )
    # What `ratchet monitor` compares the served traffic with (components/monitoring*.py).
    artifacts.update(write_reference(model_dir, texts, probabilities, labels, output_dir))
    report = EvaluationReport(
        metrics=metrics,
        labels=list(labels),
        y_true=y_true,
        predicted_ids=y_pred,
        probabilities=probabilities,
        test_split_md5=fingerprint_split(test),
        texts=texts,
        behaviour=behaviour,
        artifacts=artifacts,
    )
    eval_path = output_dir / EVAL_FILE
    eval_path.write_text(json.dumps(report.summary(), indent=2), encoding="utf-8")
    artifacts[EVAL_FILE] = eval_path
    if behaviour:
        behaviour_path = output_dir / "behaviour.json"
        behaviour_path.write_text(
            json.dumps([result.to_dict() for result in behaviour], indent=2), encoding="utf-8"
        )
        artifacts["behaviour.json"] = behaviour_path
    return report
