"""The promotion gate's pure decision: floor, tolerance, paired tests, behaviour thresholds."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from components.behaviour import CheckResult
from components.config import GateConfig
from components.gate import (
    bootstrap_accuracy_difference,
    compare_to_champion,
    mcnemar_exact,
    paired_comparison,
)

Y_TRUE = np.array([0, 1] * 50)


def predictions_with_errors(errors: list[int]) -> np.ndarray:
    """Y_TRUE with the listed positions flipped."""
    predicted = Y_TRUE.copy()
    predicted[errors] = 1 - predicted[errors]
    return predicted


def test_first_model_promoted_above_the_floor() -> None:
    decision = compare_to_champion(
        Y_TRUE, predictions_with_errors(list(range(10))), None, GateConfig(min_accuracy=0.85)
    )
    assert decision.promote
    assert decision.challenger_accuracy == pytest.approx(0.90)
    assert decision.comparison is None
    assert decision.reason.startswith("promoted: accuracy 0.9000 >= floor 0.8500; no champion yet")


def test_first_model_rejected_below_the_floor() -> None:
    decision = compare_to_champion(
        Y_TRUE, predictions_with_errors(list(range(20))), None, GateConfig(min_accuracy=0.85)
    )
    assert not decision.promote
    assert decision.outcome == "rejected"
    assert "accuracy 0.8000 is below the floor 0.8500" in decision.reason


def test_better_challenger_promoted_with_numbers() -> None:
    champion = predictions_with_errors(list(range(10)))
    challenger = predictions_with_errors([0, 1])
    decision = compare_to_champion(Y_TRUE, challenger, champion, GateConfig(min_accuracy=0.5))
    assert decision.promote
    assert decision.comparison is not None
    assert decision.comparison.difference == pytest.approx(0.08)
    assert (decision.comparison.challenger_only, decision.comparison.champion_only) == (8, 0)
    assert decision.comparison.mcnemar_p_value == pytest.approx(2 * 0.5**8)
    assert "+0.0800 vs champion 0.9000" in decision.reason


def test_worse_challenger_rejected_beyond_tolerance() -> None:
    champion = predictions_with_errors([0, 1])
    challenger = predictions_with_errors(list(range(10)))
    decision = compare_to_champion(
        Y_TRUE, challenger, champion, GateConfig(min_accuracy=0.5, tolerance=0.01)
    )
    assert not decision.promote
    assert "0.0800 below the champion's 0.9800 (tolerance 0.01)" in decision.reason


def test_small_drop_within_tolerance_promoted() -> None:
    champion = predictions_with_errors([0])
    challenger = predictions_with_errors([0, 1])
    decision = compare_to_champion(
        Y_TRUE, challenger, champion, GateConfig(min_accuracy=0.5, tolerance=0.02)
    )
    assert decision.promote
    assert decision.comparison is not None
    assert decision.comparison.difference == pytest.approx(-0.01)


def test_significant_drop_rejected_even_within_tolerance() -> None:
    y_true = np.zeros(2000, dtype=int)
    champion = np.zeros(2000, dtype=int)
    challenger = champion.copy()
    challenger[:30] = 1  # 30 new errors, none fixed: 1.5 points, McNemar p ~ 2e-9
    decision = compare_to_champion(
        y_true, challenger, champion, GateConfig(min_accuracy=0.5, tolerance=0.02)
    )
    assert not decision.promote
    assert "significantly worse than the champion (McNemar p=1.86e-09 < 0.05)" in decision.reason


def test_behaviour_threshold_blocks_promotion() -> None:
    results = [
        CheckResult("inv_names", "INV", "fairness", cases=10, passed=7, min_pass_rate=0.8),
        CheckResult("mft_positive", "MFT", "vocabulary", cases=10, passed=10),
    ]
    decision = compare_to_champion(
        Y_TRUE, Y_TRUE, None, GateConfig(min_accuracy=0.5), behaviour_results=results
    )
    assert not decision.promote
    assert decision.behaviour_failures == [
        "behaviour check inv_names passed 70.0% (7/10) < required 80.0%"
    ]


def test_global_behaviour_threshold_applies_to_checks_without_their_own() -> None:
    results = [CheckResult("mft_positive", "MFT", "vocabulary", cases=4, passed=3)]
    config = GateConfig(min_accuracy=0.5, min_behaviour_pass_rate=0.9)
    assert not compare_to_champion(Y_TRUE, Y_TRUE, None, config, results).promote
    config = GateConfig(min_accuracy=0.5, min_behaviour_pass_rate=0.75)
    assert compare_to_champion(Y_TRUE, Y_TRUE, None, config, results).promote


def test_mcnemar_matches_binomial_test() -> None:
    challenger_correct = np.array([True] * 12 + [False] * 3 + [True] * 5)
    champion_correct = np.array([False] * 12 + [True] * 3 + [True] * 5)
    expected = stats.binomtest(12, 15, 0.5).pvalue
    assert mcnemar_exact(challenger_correct, champion_correct) == pytest.approx(expected)
    assert mcnemar_exact(champion_correct, champion_correct) == 1.0


def test_bootstrap_interval_brackets_the_difference() -> None:
    rng = np.random.default_rng(1)
    champion_correct = rng.random(500) < 0.8
    challenger_correct = champion_correct | (rng.random(500) < 0.3)
    low, high = bootstrap_accuracy_difference(challenger_correct, champion_correct)
    difference = challenger_correct.mean() - champion_correct.mean()
    assert low < difference < high
    assert low > 0  # the challenger only ever fixes errors
    assert bootstrap_accuracy_difference(champion_correct, champion_correct) == (0.0, 0.0)


def test_paired_comparison_needs_equal_lengths() -> None:
    with pytest.raises(ValueError, match="equal lengths, got 100, 99, 100"):
        paired_comparison(Y_TRUE, Y_TRUE[:99], Y_TRUE, 0.05)
