"""Drift checks: a window of served traffic against the champion's reference.

Pure functions over two tables with the same columns (``label``, ``confidence``, the text
features and ``embedding``; see ``components/text_features.py``): each test gives its
statistic, p-value and threshold, and :func:`check_drift` decides. ``ratchet monitor``
(``cli/monitor.py``, I/O in ``components/monitoring_run.py``) calls it.

Too little traffic is never an alarm: below ``monitor.min_texts`` the answer is
"not enough data" (``drift`` is None) and no test runs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from components.config import MonitorConfig
from components.errors import ConfigError

# Name of each test in the JSON summary -> the column it compares.
KS_TESTS = {
    "confidence": "confidence",
    "text_length": "length",
    "oov_rate": "unk_rate",
    "ascii_letter_share": "ascii_letter_share",
    "uppercase_share": "uppercase_share",
}
LABEL_TEST = "prediction_labels"
EMBEDDING_TEST = "embedding_mmd"
TEST_NAMES = (LABEL_TEST, *KS_TESTS, EMBEDDING_TEST)


@dataclass(frozen=True)
class DriftTest:
    statistic: float
    p_value: float
    threshold: float

    @property
    def drift(self) -> bool:
        return self.p_value < self.threshold

    def to_dict(self) -> dict[str, Any]:
        return {
            "statistic": round(self.statistic, 6),
            "p_value": float(f"{self.p_value:.6g}"),
            "threshold": float(f"{self.threshold:.6g}"),
            "drift": self.drift,
        }


@dataclass(frozen=True)
class DriftResult:
    drift: bool | None
    reason: str
    tests: dict[str, DriftTest] = field(default_factory=dict)
    window: dict[str, Any] = field(default_factory=dict)

    @property
    def exit_code(self) -> int:
        """0 no drift, 1 drift, 3 not enough data."""
        return {True: 1, False: 0, None: 3}[self.drift]

    def to_dict(self) -> dict[str, Any]:
        return {
            "drift": self.drift,
            "reason": self.reason,
            "tests": {name: test.to_dict() for name, test in self.tests.items()},
            "window": self.window,
        }


def label_test(reference: pd.Series, current: pd.Series, threshold: float) -> DriftTest:
    """Chi-square test of the predicted-label counts (labels seen on either side)."""
    labels = sorted(set(reference) | set(current))
    table = np.array(
        [[int((column == label).sum()) for label in labels] for column in (reference, current)]
    )
    if len(labels) < 2:  # one label on both sides: nothing can differ
        return DriftTest(0.0, 1.0, threshold)
    result = stats.chi2_contingency(table, correction=False)
    return DriftTest(float(result.statistic), float(result.pvalue), threshold)


def ks_test(reference: pd.Series, current: pd.Series, threshold: float) -> DriftTest:
    """Two-sample Kolmogorov-Smirnov test of a numeric column."""
    result = stats.ks_2samp(reference.to_numpy(float), current.to_numpy(float))
    return DriftTest(float(result.statistic), float(result.pvalue), threshold)


def rbf_kernel(points: np.ndarray) -> np.ndarray:
    """Gaussian kernel matrix, bandwidth by the median heuristic."""
    squared = (points**2).sum(axis=1)
    distances = np.maximum(squared[:, None] + squared[None, :] - 2 * points @ points.T, 0)
    positive = distances[distances > 0]
    bandwidth = float(np.median(positive)) if positive.size else 1.0
    return np.exp(-distances / bandwidth).astype(np.float32)


def mmd_test(
    reference: np.ndarray,
    current: np.ndarray,
    threshold: float,
    permutations: int,
    rng: np.random.Generator,
) -> DriftTest:
    """Maximum mean discrepancy (biased MMD², Gaussian kernel) with a permutation p-value.

    With weights ``a`` (+1/n on the reference, -1/m on the current rows) MMD² is
    ``aᵀKa``, so all permutations cost one matrix product with the kernel.
    """
    pooled = np.vstack([reference, current]).astype(np.float64)
    kernel = rbf_kernel(pooled)
    n, m = len(reference), len(current)
    base = np.concatenate([np.full(n, 1.0 / n), np.full(m, -1.0 / m)]).astype(np.float32)
    weights = np.stack([base] + [rng.permutation(base) for _ in range(permutations)], axis=1)
    values = np.einsum("ij,ij->j", weights, kernel @ weights)
    observed = float(values[0])
    p_value = (1 + int((values[1:] >= observed).sum())) / (1 + permutations)
    return DriftTest(observed, p_value, threshold)


def sample(frame: pd.DataFrame, limit: int, seed: int) -> pd.DataFrame:
    """At most ``limit`` rows, a seeded sample (the rows as they are when fewer)."""
    return frame if len(frame) <= limit else frame.sample(n=limit, random_state=seed)


def embedding_matrix(frame: pd.DataFrame) -> np.ndarray:
    return np.array(frame["embedding"].tolist(), dtype=np.float64)


def check_permutations(config: MonitorConfig, threshold: float) -> None:
    """Raises ConfigError when the permutation test could never reach ``threshold``."""
    if 1 / (config.permutations + 1) >= threshold:
        needed = int(np.ceil(1 / threshold))
        raise ConfigError(
            f"monitor.permutations={config.permutations} cannot give a p-value under "
            f"{threshold:.3g} (monitor.significance / {len(TEST_NAMES)} tests): set it to "
            f"at least {needed}"
        )


def run_tests(
    reference: pd.DataFrame, current: pd.DataFrame, config: MonitorConfig
) -> dict[str, DriftTest]:
    """Every drift test, each at the family-wise level split over the tests (Bonferroni)."""
    threshold = config.significance / len(TEST_NAMES)
    check_permutations(config, threshold)
    reference = sample(reference, config.max_texts, config.seed)
    current = sample(current, config.max_texts, config.seed)
    tests = {LABEL_TEST: label_test(reference["label"], current["label"], threshold)}
    for name, column in KS_TESTS.items():
        tests[name] = ks_test(reference[column], current[column], threshold)
    tests[EMBEDDING_TEST] = mmd_test(
        embedding_matrix(reference),
        embedding_matrix(current),
        threshold,
        config.permutations,
        np.random.default_rng(config.seed),
    )
    return tests


def check_drift(
    reference: pd.DataFrame,
    current: pd.DataFrame,
    config: MonitorConfig,
    window: dict[str, Any],
) -> DriftResult:
    """Decide whether ``current`` traffic drifted from ``reference``.

    Returns:
        ``drift`` None (not enough data: fewer than ``config.min_texts`` texts), True when
        any test's p-value is under its threshold, else False; the reason names the tests.
    """
    if len(current) < config.min_texts:
        reason = (
            f"not enough data: {len(current)} texts served by the champion in the window, "
            f"monitor.min_texts is {config.min_texts}"
        )
        return DriftResult(drift=None, reason=reason, window=window)
    tests = run_tests(reference, current, config)
    drifted = [name for name, test in tests.items() if test.drift]
    if drifted:
        reason = f"drift in {', '.join(drifted)} (p < {tests[drifted[0]].threshold:.3g})"
    else:
        reason = f"no drift: all {len(tests)} tests have p >= {tests[LABEL_TEST].threshold:.3g}"
    return DriftResult(drift=bool(drifted), reason=reason, tests=tests, window=window)
