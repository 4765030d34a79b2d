"""The promotion gate's pure decision: floors, majority baseline, tolerance against the
current and the best champion, one-sided paired tests, behaviour thresholds."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from components.behaviour import CheckResult
from components.config import GateConfig
from components.gate import compare_to_champion
from components.gate_stats import (
    bootstrap_accuracy_difference,
    bootstrap_metric_differences,
    mcnemar_exact,
    paired_comparison,
    score_metric,
)

Y_TRUE = np.array([0, 1] * 50)
# The old decision's settings, for tests about the floor and the paired tests alone.
ACCURACY_ONLY = GateConfig(
    metric="accuracy", min_class_recall=None, min_majority_error_reduction=None
)


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
    assert decision.comparison is None and decision.best_comparison is None
    assert decision.reason.startswith(
        "promoted: f1_macro 0.9000 (accuracy 0.9000) on 100 test examples; always '0' scores "
        "accuracy 0.5000; the challenger removes 80.0% of its errors"
    )
    assert decision.reason.endswith("; no champion yet")


def test_first_model_rejected_below_the_floor() -> None:
    decision = compare_to_champion(
        Y_TRUE, predictions_with_errors(list(range(20))), None, GateConfig(min_accuracy=0.85)
    )
    assert not decision.promote
    assert decision.outcome == "rejected"
    assert "accuracy 0.8000 is below the floor 0.8500 (gate.min_accuracy)" in decision.reason


def test_better_challenger_promoted_with_numbers() -> None:
    champion = predictions_with_errors(list(range(10)))
    challenger = predictions_with_errors([0, 1])
    decision = compare_to_champion(Y_TRUE, challenger, champion, ACCURACY_ONLY)
    assert decision.promote
    assert decision.comparison is not None
    assert decision.comparison.difference == pytest.approx(0.08)
    assert (decision.comparison.challenger_only, decision.comparison.champion_only) == (8, 0)
    # One-sided: "is the challenger worse?" -- certainly not when it only fixes errors.
    assert decision.comparison.mcnemar_p_value == 1.0
    assert "accuracy +0.0800 vs champion 0.9000" in decision.reason


def test_worse_challenger_rejected_beyond_tolerance() -> None:
    champion = predictions_with_errors([0, 1])
    challenger = predictions_with_errors(list(range(10)))
    config = ACCURACY_ONLY.model_copy(update={"tolerance": 0.01})
    decision = compare_to_champion(Y_TRUE, challenger, champion, config)
    assert not decision.promote
    assert "0.0800 below the champion's 0.9800 (tolerance 0.01)" in decision.reason


def test_small_drop_within_tolerance_promoted() -> None:
    champion = predictions_with_errors([0])
    challenger = predictions_with_errors([0, 1])
    config = ACCURACY_ONLY.model_copy(update={"tolerance": 0.02})
    decision = compare_to_champion(Y_TRUE, challenger, champion, config)
    assert decision.promote
    assert decision.comparison is not None
    assert decision.comparison.difference == pytest.approx(-0.01)


def test_significant_drop_rejected_even_within_tolerance() -> None:
    y_true = np.zeros(2000, dtype=int)
    champion = np.zeros(2000, dtype=int)
    challenger = champion.copy()
    challenger[:30] = 1  # 30 new errors, none fixed: 1.5 points, one-sided p = 0.5**30
    config = ACCURACY_ONLY.model_copy(update={"tolerance": 0.02})
    decision = compare_to_champion(y_true, challenger, champion, config)
    assert not decision.promote
    assert (
        "significantly worse than the champion (one-sided McNemar p=9.31e-10 < 0.05)"
        in decision.reason
    )


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
    less = stats.binomtest(12, 15, 0.5, alternative="less").pvalue
    assert mcnemar_exact(challenger_correct, champion_correct) == pytest.approx(less)
    assert mcnemar_exact(challenger_correct, champion_correct, "greater") == pytest.approx(
        stats.binomtest(12, 15, 0.5, alternative="greater").pvalue
    )
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


def test_global_behaviour_threshold_replaces_the_suites_when_they_are_off() -> None:
    results = [CheckResult("mft_negative", "MFT", "vocabulary", 10, 0, min_pass_rate=0.8)]
    assert not compare_to_champion(Y_TRUE, Y_TRUE, None, GateConfig(), results).promote
    relaxed = GateConfig(behaviour_thresholds=False)
    assert compare_to_champion(Y_TRUE, Y_TRUE, None, relaxed, results).promote


def test_mcnemar_is_one_sided_at_the_documented_level() -> None:
    """9 new errors, 2 fixed: one-sided p = P(X <= 2 | 11) = 67/2048 = 0.033 < 0.05, while
    the two-sided p (0.065) let the worse challenger through."""
    y_true = np.array([0, 1] * 1000)
    champion = y_true.copy()
    champion[:2] = 1 - y_true[:2]  # the champion's errors that the challenger fixes
    challenger = y_true.copy()
    challenger[2:11] = 1 - y_true[2:11]  # the challenger's new errors
    decision = compare_to_champion(y_true, challenger, champion, GateConfig(metric="accuracy"))
    assert decision.comparison is not None
    assert decision.comparison.mcnemar_p_value == pytest.approx(67 / 2048)
    assert -decision.comparison.difference < decision.tolerance  # within the tolerance
    assert not decision.promote
    assert decision.failed_conditions == [
        "significantly worse than the champion (one-sided McNemar p=0.0327 < 0.05)"
    ]


def constant_positive_on_90_10() -> tuple[np.ndarray, np.ndarray]:
    y_true = np.array([1] * 785 + [0] * 87)  # 872 examples, 90% positive
    return y_true, np.ones_like(y_true)


def test_constant_predictor_rejected_by_default_without_a_champion() -> None:
    y_true, constant = constant_positive_on_90_10()
    decision = compare_to_champion(
        y_true, constant, None, GateConfig(), labels=["negative", "positive"]
    )
    assert decision.challenger_accuracy == pytest.approx(0.9002, abs=1e-4)
    assert not decision.promote
    assert decision.failed_conditions == [
        "recall of class 'negative' 0.0000 is below gate.min_class_recall=0.05",
        "accuracy 0.9002 does not beat always predicting 'positive' (0.9002) by "
        "gate.min_majority_error_reduction=0.1 of its errors (needs 0.9102)",
        "not significantly better than always predicting 'positive' (one-sided McNemar "
        "p=1 >= 0.05)",
    ]
    assert decision.majority is not None and decision.majority.label == "positive"
    assert decision.class_recall == {"negative": 0.0, "positive": 1.0}


def test_a_model_must_beat_the_majority_significantly() -> None:
    """One more right answer than the constant predictor clears the margin share 0 but not
    the significance test."""
    y_true, predicted = constant_positive_on_90_10()
    predicted = predicted.copy()
    predicted[-8:] = 0  # 8 of the 87 negatives found...
    predicted[:5] = 0  # ...at the cost of 5 positives
    config = GateConfig(min_majority_error_reduction=0.0, min_class_recall=None)
    decision = compare_to_champion(y_true, predicted, None, config)
    assert decision.majority is not None
    assert (decision.majority.challenger_only, decision.majority.baseline_only) == (8, 5)
    assert decision.majority.p_value == pytest.approx(
        stats.binomtest(8, 13, 0.5, alternative="greater").pvalue
    )
    assert decision.failed_conditions == [
        "not significantly better than always predicting '1' (one-sided McNemar p=0.291 >= 0.05)"
    ]


def three_class_tweets() -> tuple[np.ndarray, np.ndarray]:
    """900 tweets, majority class 48%, a model at accuracy 0.747 and macro-F1 0.742."""
    counts, wrong = [432, 270, 198], [127, 78, 23]
    y_true = np.concatenate([np.full(count, label) for label, count in enumerate(counts)])
    predicted, start = y_true.copy(), 0
    for label, (count, errors) in enumerate(zip(counts, wrong, strict=True)):
        predicted[start : start + errors] = [(label + 1 + i % 2) % 3 for i in range(errors)]
        start += count
    return y_true, predicted


def test_a_reasonable_three_class_model_passes_the_default_gate() -> None:
    y_true, predicted = three_class_tweets()
    assert score_metric("accuracy", y_true, predicted) == pytest.approx(0.7467, abs=1e-4)
    assert score_metric("f1_macro", y_true, predicted) == pytest.approx(0.7420, abs=1e-4)
    labels = ["negative", "neutral", "positive"]
    decision = compare_to_champion(y_true, predicted, None, GateConfig(), labels=labels)
    assert decision.promote, decision.reason
    assert decision.metric == "f1_macro"
    assert decision.challenger_metric == pytest.approx(0.7420, abs=1e-4)


def test_too_few_test_examples_are_refused() -> None:
    decision = compare_to_champion(Y_TRUE[:50], Y_TRUE[:50], None, GateConfig())
    assert not decision.promote
    assert decision.failed_conditions == [
        "the test split has 50 examples, fewer than gate.min_test_examples=100: too few to gate on"
    ]


def test_f1_floor_and_class_recall_floor() -> None:
    y_true, predicted = three_class_tweets()
    config = GateConfig(min_f1_macro=0.75, min_class_recall=0.75)
    decision = compare_to_champion(y_true, predicted, None, config, labels=["a", "b", "c"])
    assert decision.failed_conditions == [
        "f1_macro 0.7420 is below the floor 0.7500 (gate.min_f1_macro)",
        "recall of class 'a' 0.7060 is below gate.min_class_recall=0.75",
        "recall of class 'b' 0.7111 is below gate.min_class_recall=0.75",
    ]


def test_the_tolerance_is_a_budget_against_the_best_former_champion() -> None:
    """Within the tolerance of the current champion, but beyond it below the best one."""
    y_true = np.array([0, 1] * 500)
    best = y_true.copy()
    best[:100] = 1 - y_true[:100]  # 0.900
    current = best.copy()
    current[100:104] = 1 - y_true[100:104]  # 0.896, promoted earlier within the tolerance
    challenger = current.copy()
    challenger[104:108] = 1 - y_true[104:108]  # 0.892
    decision = compare_to_champion(
        y_true,
        challenger,
        current,
        GateConfig(metric="accuracy"),
        champion_version="4",
        best_champion_pred=best,
        best_champion_version="3",
    )
    assert decision.comparison is not None and decision.best_comparison is not None
    assert decision.comparison.metric_difference == pytest.approx(-0.004)
    assert decision.best_comparison.metric_difference == pytest.approx(-0.008)
    assert not decision.promote
    assert decision.failed_conditions == [
        "accuracy 0.8920 is 0.0080 below the best champion v3 on this test split's 0.9000 "
        "(tolerance 0.005)"
    ]
    assert "vs best champion v3 0.9000" in decision.reason
    assert (decision.champion_version, decision.best_champion_version) == ("4", "3")
    record = decision.to_dict()
    assert record["best_comparison"]["champion_version"] == "3"
    assert record["comparison"]["champion_version"] == "4"


def test_macro_f1_drop_is_caught_by_the_paired_bootstrap() -> None:
    """Same accuracy, but the minority class is traded for the majority: McNemar sees
    nothing, the bootstrap bound of the macro-F1 difference is below zero."""
    y_true = np.array([0] * 900 + [1] * 100)
    champion = y_true.copy()
    champion[:60] = 1  # 60 majority examples wrong
    challenger = y_true.copy()
    challenger[900:960] = 0  # instead 60 of the 100 minority examples wrong
    loose = {"tolerance": 0.5}
    by_accuracy = GateConfig(metric="accuracy", **loose)
    assert compare_to_champion(y_true, challenger, champion, by_accuracy).promote
    decision = compare_to_champion(y_true, challenger, champion, GateConfig(**loose))
    assert decision.comparison is not None
    assert decision.comparison.metric_difference < 0
    assert decision.comparison.upper_bound < 0
    assert not decision.promote
    assert decision.failed_conditions[0].startswith(
        "significantly worse than the champion on f1_macro (one-sided 95% bootstrap bound -0.04"
    )


def test_metrics_match_scikit_learn_and_the_bootstrap_is_fast() -> None:
    import time

    from sklearn.metrics import accuracy_score, f1_score

    rng = np.random.default_rng(3)
    y_true = rng.integers(0, 3, 900)
    first = np.where(rng.random(900) < 0.8, y_true, rng.integers(0, 3, 900))
    second = np.where(rng.random(900) < 0.75, y_true, rng.integers(0, 3, 900))
    assert score_metric("accuracy", y_true, first) == pytest.approx(accuracy_score(y_true, first))
    for average in ("macro", "weighted"):
        assert score_metric(f"f1_{average}", y_true, first) == pytest.approx(
            f1_score(y_true, first, average=average)
        )
    started = time.perf_counter()
    differences = bootstrap_metric_differences(y_true, first, second, "f1_macro", 3)
    assert time.perf_counter() - started < 1.0
    assert differences.shape == (2000,)
    observed = score_metric("f1_macro", y_true, first) - score_metric("f1_macro", y_true, second)
    assert np.quantile(differences, 0.025) < observed < np.quantile(differences, 0.975)
