"""The promotion gate: a challenger becomes champion only if it is not worse.

:func:`compare_to_champion` is the pure decision. It pairs the challenger's predictions with
the champions' on the *same* test examples and promotes only when

1. the test split has at least ``gate.min_test_examples`` examples;
2. the challenger clears the absolute floors that are set (``gate.min_accuracy``,
   ``gate.min_f1_macro``) and recalls every class at least ``gate.min_class_recall``;
3. it beats the majority-class baseline (always predicting the most frequent test label):
   it removes at least ``gate.min_majority_error_reduction`` of the baseline's errors, and
   is significantly better than it (one-sided exact McNemar, ``p < gate.significance``);
4. every behavioural check with a threshold passes at least that share of its cases;
5. against the current champion: ``gate.metric`` is not lower by more than
   ``gate.tolerance``, and not significantly lower (one-sided: exact McNemar for accuracy,
   the paired bootstrap bound of the metric difference for the other metrics);
6. against the best model that ever held ``champion`` on the same test split: ``gate.metric``
   is not lower by more than ``gate.tolerance``. The tolerance is thus a budget against the
   best, not a step allowed at every promotion, so small drops cannot add up.

The statistics live in ``components/gate_stats.py``; the I/O shell around the decision
(finding the champions, re-scoring, recording, moving the aliases last) is
``components/promotion.py``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from components.behaviour import CheckResult
from components.config import GateConfig
from components.gate_stats import (
    BaselineComparison,
    PairedComparison,
    class_recalls,
    majority_baseline,
    paired_comparison,
    score_metric,
)


@dataclass(frozen=True)
class GateDecision:
    """The outcome of the gate, with every number that led to it.

    ``comparison`` is against the current champion, ``best_comparison`` against the best
    model that ever held ``champion`` on ``test_split_md5`` (None when there is none).
    """

    promote: bool
    reason: str
    challenger_accuracy: float
    min_accuracy: float | None
    tolerance: float
    significance: float
    comparison: PairedComparison | None = None
    failed_conditions: list[str] = field(default_factory=list)
    behaviour_failures: list[str] = field(default_factory=list)
    challenger_version: str | None = None
    champion_version: str | None = None
    champion_rescored: bool = False
    rescore_note: str = ""
    forced: bool = False
    metric: str = "accuracy"
    challenger_metric: float | None = None
    test_examples: int = 0
    test_split_md5: str | None = None
    class_recall: dict[str, float] = field(default_factory=dict)
    majority: BaselineComparison | None = None
    best_comparison: PairedComparison | None = None
    best_champion_version: str | None = None
    settings: dict[str, Any] = field(default_factory=dict)
    awaiting_review: bool = False  # passed, but gate.require_approval: a reviewer decides

    @property
    def outcome(self) -> str:
        if self.promote and self.awaiting_review:
            return "pending-review"
        return "promoted" if self.promote else "rejected"

    def to_dict(self) -> dict[str, Any]:
        return {"outcome": self.outcome, **asdict(self)}

    @classmethod
    def under(cls, gate_cfg: GateConfig, **outcome: Any) -> GateDecision:
        """A decision taken under ``gate_cfg``: its thresholds, metric and full settings
        recorded beside the ``outcome`` fields (promote, reason, the scores...)."""
        return cls(
            **outcome,
            min_accuracy=gate_cfg.min_accuracy,
            tolerance=gate_cfg.tolerance,
            significance=gate_cfg.significance,
            metric=gate_cfg.metric,
            settings=gate_cfg.model_dump(),
        )


def behaviour_shortfalls(
    results: Sequence[CheckResult],
    default_min_pass_rate: float | None,
    use_check_thresholds: bool = True,
) -> list[str]:
    """One line per behavioural check below its threshold."""
    shortfalls = []
    for result in results:
        own = result.min_pass_rate if use_check_thresholds else None
        threshold = own if own is not None else default_min_pass_rate
        if threshold is not None and result.pass_rate < threshold:
            shortfalls.append(
                f"behaviour check {result.name} passed {result.pass_rate:.1%} "
                f"({result.passed}/{result.cases}) < required {threshold:.1%}"
            )
    return shortfalls


def describe_comparison(comparison: PairedComparison, against: str = "champion") -> str:
    metric = comparison.metric
    text = (
        f"{metric} {comparison.metric_difference:+.4f} vs {against} "
        f"{comparison.champion_metric:.4f} ({comparison.confidence_level:.0%} bootstrap CI "
        f"[{comparison.ci_low:+.4f}, {comparison.ci_high:+.4f}]"
    )
    if metric != "accuracy":
        text += f", accuracy {comparison.difference:+.4f}"
    return (
        f"{text}, one-sided McNemar p={comparison.mcnemar_p_value:.3g}, "
        f"{comparison.challenger_only} vs {comparison.champion_only} discordant)"
    )


def describe_baseline(baseline: BaselineComparison) -> str:
    return (
        f"always '{baseline.label}' scores accuracy {baseline.baseline_accuracy:.4f}; the "
        f"challenger removes {baseline.error_reduction:.1%} of its errors (one-sided "
        f"McNemar p={baseline.p_value:.3g}, {baseline.challenger_only} vs "
        f"{baseline.baseline_only} discordant)"
    )


def floor_shortfalls(
    y_true: np.ndarray,
    challenger_pred: np.ndarray,
    labels: Sequence[str],
    gate_cfg: GateConfig,
) -> tuple[list[str], dict[str, float]]:
    """Test-set size, absolute floors and per-class recall: the failures and the recalls."""
    failed = []
    if len(y_true) < gate_cfg.min_test_examples:
        failed.append(
            f"the test split has {len(y_true)} examples, fewer than gate.min_test_examples="
            f"{gate_cfg.min_test_examples}: too few to gate on"
        )
    floors = {"accuracy": gate_cfg.min_accuracy, "f1_macro": gate_cfg.min_f1_macro}
    for metric, floor in floors.items():
        value = score_metric(metric, y_true, challenger_pred, len(labels))
        if floor is not None and value < floor:
            failed.append(
                f"{metric} {value:.4f} is below the floor {floor:.4f} (gate.min_{metric})"
            )
    recalls = class_recalls(y_true, challenger_pred, len(labels))
    recall_by_label = {
        label: float(value) for label, value in zip(labels, recalls, strict=True) if value == value
    }
    if gate_cfg.min_class_recall is not None:
        for label, value in recall_by_label.items():
            if value < gate_cfg.min_class_recall:
                failed.append(
                    f"recall of class '{label}' {value:.4f} is below "
                    f"gate.min_class_recall={gate_cfg.min_class_recall}"
                )
    return failed, recall_by_label


def baseline_shortfalls(baseline: BaselineComparison, gate_cfg: GateConfig) -> list[str]:
    """Whether the challenger beats the majority-class baseline by the margin, significantly."""
    share = gate_cfg.min_majority_error_reduction
    if share is None:
        return []
    failed = []
    if baseline.error_reduction < share:
        required = baseline.baseline_accuracy + share * (1 - baseline.baseline_accuracy)
        failed.append(
            f"accuracy {baseline.challenger_accuracy:.4f} does not beat always predicting "
            f"'{baseline.label}' ({baseline.baseline_accuracy:.4f}) by "
            f"gate.min_majority_error_reduction={share} of its errors (needs {required:.4f})"
        )
    if baseline.p_value >= gate_cfg.significance:
        failed.append(
            f"not significantly better than always predicting '{baseline.label}' "
            f"(one-sided McNemar p={baseline.p_value:.3g} >= {gate_cfg.significance})"
        )
    return failed


def champion_shortfalls(
    comparison: PairedComparison, gate_cfg: GateConfig, best: bool = False
) -> list[str]:
    """A drop beyond the tolerance; against the current champion also a significant one."""
    metric = comparison.metric
    who = f" v{comparison.champion_version}" if comparison.champion_version else ""
    name = f"the best champion{who} on this test split" if best else f"the champion{who}"
    if comparison.metric_difference < -gate_cfg.tolerance:
        return [
            f"{metric} {comparison.challenger_metric:.4f} is {-comparison.metric_difference:.4f} "
            f"below {name}'s {comparison.champion_metric:.4f} (tolerance {gate_cfg.tolerance})"
        ]
    if best or comparison.metric_difference >= 0:
        return []
    if metric == "accuracy" and comparison.mcnemar_p_value < gate_cfg.significance:
        return [
            f"significantly worse than {name} (one-sided McNemar p="
            f"{comparison.mcnemar_p_value:.3g} < {gate_cfg.significance})"
        ]
    if metric != "accuracy" and comparison.upper_bound < 0:
        return [
            f"significantly worse than {name} on {metric} (one-sided "
            f"{comparison.confidence_level:.0%} bootstrap bound {comparison.upper_bound:+.4f} < 0)"
        ]
    return []


def class_names(
    y_true: np.ndarray,
    challenger_pred: np.ndarray,
    labels: Sequence[str] | None,
    *other_preds: np.ndarray | None,
) -> tuple[int, list[str]]:
    """How many classes the predictions span (at least ``labels``), and their names
    (the ids as text when no labels are given)."""
    others = [p for p in other_preds if p is not None]
    classes = len(labels) if labels else int(max(y_true.max(), challenger_pred.max())) + 1
    classes = max([classes] + [int(np.max(p)) + 1 for p in others])
    names = list(labels) if labels else [str(index) for index in range(classes)]
    return classes, names


def compare_with(
    y_true: np.ndarray,
    challenger_pred: np.ndarray,
    champion_pred: np.ndarray | None,
    champion_version: str | None,
    gate_cfg: GateConfig,
    classes: int,
) -> PairedComparison | None:
    """The paired statistics against one champion; None when there is none."""
    if champion_pred is None:
        return None
    return paired_comparison(
        y_true,
        challenger_pred,
        np.asarray(champion_pred),
        gate_cfg.significance,
        gate_cfg.metric,
        classes,
        champion_version,
    )


def decision_reason(
    failed: list[str],
    headline: str,
    baseline: BaselineComparison,
    current: PairedComparison | None,
    best: PairedComparison | None,
) -> str:
    """The decision in one line: the outcome, what failed, and the numbers behind it."""
    parts = [describe_baseline(baseline)]
    parts.append(describe_comparison(current) if current else "no champion yet")
    if best is not None:
        parts.append(describe_comparison(best, f"best champion v{best.champion_version}"))
    if not failed:
        return f"promoted: {headline}; {'; '.join(parts)}"
    return f"rejected: {'; '.join(failed)}; {headline}; {'; '.join(parts)}"


def compare_to_champion(
    y_true: np.ndarray,
    challenger_pred: np.ndarray,
    champion_pred: np.ndarray | None,
    gate_cfg: GateConfig,
    behaviour_results: Sequence[CheckResult] | None = None,
    *,
    labels: Sequence[str] | None = None,
    champion_version: str | None = None,
    best_champion_pred: np.ndarray | None = None,
    best_champion_version: str | None = None,
) -> GateDecision:
    """Decide whether the challenger may replace the champion.

    Args:
        y_true: true class ids of the test split.
        challenger_pred: the challenger's predicted ids on it.
        champion_pred: the current champion's predicted ids on the same examples; None when
            there is no champion yet.
        gate_cfg: the ``gate`` section (metric, floors, baseline margin, tolerance, level).
        behaviour_results: the challenger's behavioural check results.
        labels: class names in id order (default: the ids as text).
        champion_version: the current champion's version, for the record.
        best_champion_pred: predicted ids of the best model that ever held champion on this
            test split (recorded when it was evaluated); None when there is none.
        best_champion_version: its version.

    Returns:
        The decision; ``reason`` states the outcome and the numbers behind it.
    """
    y_true, challenger_pred = np.asarray(y_true), np.asarray(challenger_pred)
    classes, names = class_names(y_true, challenger_pred, labels, champion_pred, best_champion_pred)
    challenger_accuracy = float(np.mean(challenger_pred == y_true))
    challenger_metric = score_metric(gate_cfg.metric, y_true, challenger_pred, classes)
    failed, recalls = floor_shortfalls(y_true, challenger_pred, names, gate_cfg)
    baseline = majority_baseline(y_true, challenger_pred, names)
    failed += baseline_shortfalls(baseline, gate_cfg)
    behaviour_failures = behaviour_shortfalls(
        behaviour_results or [], gate_cfg.min_behaviour_pass_rate, gate_cfg.behaviour_thresholds
    )
    failed += behaviour_failures
    current = compare_with(
        y_true, challenger_pred, champion_pred, champion_version, gate_cfg, classes
    )
    best = compare_with(
        y_true, challenger_pred, best_champion_pred, best_champion_version, gate_cfg, classes
    )
    if current is not None:
        failed += champion_shortfalls(current, gate_cfg)
    if best is not None:
        failed += champion_shortfalls(best, gate_cfg, best=True)
    headline = (
        f"{gate_cfg.metric} {challenger_metric:.4f} (accuracy {challenger_accuracy:.4f}) on "
        f"{len(y_true)} test examples"
    )
    return GateDecision.under(
        gate_cfg,
        promote=not failed,
        reason=decision_reason(failed, headline, baseline, current, best),
        challenger_accuracy=challenger_accuracy,
        comparison=current,
        failed_conditions=failed,
        behaviour_failures=behaviour_failures,
        champion_version=champion_version if current is not None else None,
        challenger_metric=challenger_metric,
        test_examples=len(y_true),
        class_recall=recalls,
        majority=baseline,
        best_comparison=best,
        best_champion_version=best_champion_version if best is not None else None,
    )
