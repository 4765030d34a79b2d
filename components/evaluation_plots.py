"""The evaluation's plots: the confusion matrix and the reliability diagram, as PNG files.

Written by :func:`components.evaluate.write_report_files` next to the evaluation's tables;
matplotlib is imported inside each function (with the file-only Agg backend), so importing
the evaluation does not pay for it.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from sklearn import metrics as skm


def plot_confusion_matrix(matrix: np.ndarray, labels: Sequence[str], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    display = skm.ConfusionMatrixDisplay(matrix, display_labels=list(labels))
    figure, axes = plt.subplots(figsize=(4 + 0.4 * len(labels), 4 + 0.4 * len(labels)))
    display.plot(ax=axes, cmap="Blues", colorbar=False, values_format="d")
    axes.set_title("Confusion matrix (test split)")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


def plot_reliability_diagram(
    y_true: np.ndarray, probabilities: np.ndarray, bins: int, ece: float, path: Path
) -> Path:
    """Top-label reliability: accuracy against confidence per bin (any number of classes)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.calibration import calibration_curve

    correct = (probabilities.argmax(axis=1) == y_true).astype(int)
    confidence = probabilities.max(axis=1)
    figure, axes = plt.subplots(figsize=(5, 5))
    axes.plot([0, 1], [0, 1], linestyle="--", color="grey", label="perfectly calibrated")
    if len(np.unique(correct)) > 1:
        accuracy, mean_confidence = calibration_curve(correct, confidence, n_bins=bins)
        axes.plot(mean_confidence, accuracy, marker="o", label="model")
    axes.set(xlabel="confidence", ylabel="accuracy", xlim=(0, 1), ylim=(0, 1))
    axes.set_title(f"Reliability diagram (ECE {ece:.3f})")
    axes.legend(loc="upper left")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path
