"""A picture of a drift check: the window's traffic over the champion's reference.

One panel per test of :mod:`components.monitoring` (label shares, then the distributions the
KS tests compare, then the embeddings' first two principal components), titled with the
p-value and marked red where the test found drift. Logged to MLflow beside the Evidently
report; ``ratchet monitor --plot PATH`` also writes it where a person will look.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from components.monitoring import (
    EMBEDDING_TEST,
    KS_TESTS,
    LABEL_TEST,
    DriftResult,
    DriftTest,
    embedding_matrix,
)

REFERENCE_COLOUR, CURRENT_COLOUR, DRIFT_COLOUR = "#4c72b0", "#dd8452", "#c0392b"


def panel_title(name: str, test: DriftTest | None) -> str:
    if test is None:
        return name
    verdict = "DRIFT" if test.drift else "ok"
    return f"{name}\np = {test.p_value:.2g} ({verdict})"


def label_shares(reference: pd.Series, current: pd.Series) -> pd.DataFrame:
    """Share of each predicted label in both tables (labels either side ever gave)."""
    shares = pd.DataFrame(
        {
            "reference": reference.value_counts(normalize=True),
            "traffic": current.value_counts(normalize=True),
        }
    )
    return shares.fillna(0.0).sort_index()


def embedding_projection(
    reference: pd.DataFrame, current: pd.DataFrame
) -> tuple[np.ndarray, np.ndarray]:
    """Both tables' embeddings on the reference's first two principal components."""
    ref, cur = embedding_matrix(reference), embedding_matrix(current)
    centre = ref.mean(axis=0)
    _, _, components = np.linalg.svd(ref - centre, full_matrices=False)
    axes = components[:2].T
    return (ref - centre) @ axes, (cur - centre) @ axes


def plot_drift(
    reference: pd.DataFrame, current: pd.DataFrame, result: DriftResult, path: Path
) -> Path:
    """Write the drift picture of ``result`` (which compared these two tables) to ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [LABEL_TEST, *KS_TESTS, EMBEDDING_TEST]
    figure, grid = plt.subplots(2, 4, figsize=(16, 7.5))
    panels = dict(zip(names, grid.flat, strict=False))
    shares = label_shares(reference["label"], current["label"])
    shares.plot.bar(ax=panels[LABEL_TEST], color=[REFERENCE_COLOUR, CURRENT_COLOUR], rot=0)
    panels[LABEL_TEST].set_ylabel("share of texts")
    for name, column in KS_TESTS.items():
        values = pd.concat([reference[column], current[column]]).astype(float)
        bins = np.histogram_bin_edges(values, bins=30)
        axes = panels[name]
        for table, colour, label in (
            (reference, REFERENCE_COLOUR, "reference"),
            (current, CURRENT_COLOUR, "traffic"),
        ):
            axes.hist(table[column], bins=bins, density=True, alpha=0.55, color=colour, label=label)
    ref_points, cur_points = embedding_projection(reference, current)
    axes = panels[EMBEDDING_TEST]
    axes.scatter(*ref_points.T, s=6, alpha=0.5, color=REFERENCE_COLOUR, label="reference")
    axes.scatter(*cur_points.T, s=6, alpha=0.5, color=CURRENT_COLOUR, label="traffic")
    axes.set_xlabel("PC 1 of the reference")
    for name, axes in panels.items():
        test = result.tests.get(name)
        drifted = test is not None and test.drift
        axes.set_title(panel_title(name, test), color=DRIFT_COLOUR if drifted else "black")
        axes.legend(fontsize=8)
    grid.flat[-1].axis("off")
    grid.flat[-1].text(0, 0.5, verdict_text(result), fontsize=11, va="center", wrap=True)
    figure.tight_layout()
    figure.savefig(path, dpi=90)
    plt.close(figure)
    return path


def verdict_text(result: DriftResult) -> str:
    window = result.window
    head = {True: "DRIFT", False: "no drift", None: "not enough data"}[result.drift]
    return (
        f"{head}\n\n{window.get('texts', 0)} texts in {window.get('requests', 0)} requests\n"
        f"since {window.get('since', '?')}\n\n{result.reason}"
    )
