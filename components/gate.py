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

:func:`apply_gate` is the thin shell around it: it finds the champions, re-scores the
current one on the challenger's test split when the splits differ (with the champion's own
recorded inference settings, and says so), records the decision on the challenger's model
version (tags and a JSON artifact) and, last of all, moves the aliases. A crash anywhere
before that last step leaves ``champion`` where it was.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from scipy import stats

from components.behaviour import CheckResult
from components.config import GateConfig

if TYPE_CHECKING:
    from mlflow import MlflowClient

    from components.aliases import Release
    from components.evaluate import EvaluationReport

BOOTSTRAP_RESAMPLES = 2000
BOOTSTRAP_SEED = 0
# Resampled rows held in memory at once (rows x resamples), so a large test split stays cheap.
BOOTSTRAP_CHUNK_CELLS = 4_000_000


@dataclass(frozen=True)
class PairedComparison:
    """Challenger vs a champion on the same examples.

    Attributes:
        metric: the compared metric (``gate.metric``).
        challenger_metric, champion_metric, metric_difference: its values and
            challenger - champion.
        challenger_accuracy, champion_accuracy, difference: accuracy and its difference.
        challenger_only: examples only the challenger gets right (McNemar's b).
        champion_only: examples only the champion gets right (McNemar's c).
        mcnemar_p_value: one-sided exact McNemar p-value that the challenger is worse,
            P(X <= b) for X ~ Binomial(b + c, 1/2).
        ci_low, ci_high: two-sided paired bootstrap interval of the metric difference.
        upper_bound: one-sided upper bound of the metric difference at the same confidence
            (below zero: the challenger is significantly worse on the metric).
        champion_version: the champion's version, when known.
    """

    challenger_accuracy: float
    champion_accuracy: float
    difference: float
    challenger_only: int
    champion_only: int
    mcnemar_p_value: float
    ci_low: float
    ci_high: float
    confidence_level: float
    metric: str = "accuracy"
    challenger_metric: float = 0.0
    champion_metric: float = 0.0
    metric_difference: float = 0.0
    upper_bound: float = 0.0
    champion_version: str | None = None


@dataclass(frozen=True)
class BaselineComparison:
    """Challenger vs the constant predictor of the test split's most frequent class.

    Attributes:
        label: that class's name.
        baseline_accuracy: its share of the test split (the constant predictor's accuracy).
        error_reduction: share of the baseline's errors the challenger removes,
            (accuracy - baseline) / (1 - baseline).
        challenger_only, baseline_only: discordant examples (McNemar's b and c).
        p_value: one-sided exact McNemar p-value that the challenger is better,
            P(X >= b) for X ~ Binomial(b + c, 1/2).
    """

    label: str
    baseline_accuracy: float
    challenger_accuracy: float
    error_reduction: float
    challenger_only: int
    baseline_only: int
    p_value: float


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


def confusion_counts(
    y_true: np.ndarray,
    predicted: np.ndarray,
    num_classes: int,
    rows: np.ndarray | None = None,
) -> np.ndarray:
    """Confusion matrix (true x predicted), or one per row of ``rows`` (resampled indices).

    Returns:
        ``(classes, classes)`` counts, or ``(len(rows), classes, classes)`` with ``rows``.
    """
    codes = np.asarray(y_true, dtype=np.int64) * num_classes + np.asarray(predicted, np.int64)
    cells = num_classes * num_classes
    if rows is None:
        return np.bincount(codes, minlength=cells).reshape(num_classes, num_classes)
    offsets = np.arange(rows.shape[0], dtype=np.int64)[:, None] * cells
    counts = np.bincount((offsets + codes[rows]).ravel(), minlength=rows.shape[0] * cells)
    return counts.reshape(rows.shape[0], num_classes, num_classes)


def metric_from_confusion(metric: str, confusion: np.ndarray) -> np.ndarray:
    """``accuracy``, ``f1_macro`` or ``f1_weighted`` of one or many confusion matrices.

    F1 follows scikit-learn with ``labels=range(classes)`` and ``zero_division=0``: a class
    neither present nor predicted scores 0 and still counts in the macro mean.
    """
    correct = np.diagonal(confusion, axis1=-2, axis2=-1).astype(float)
    true_counts = confusion.sum(axis=-1).astype(float)
    total = true_counts.sum(axis=-1)
    if metric == "accuracy":
        return np.asarray(correct.sum(axis=-1) / total)
    denominator = true_counts + confusion.sum(axis=-2)
    f1 = np.divide(2 * correct, denominator, out=np.zeros_like(correct), where=denominator > 0)
    if metric == "f1_macro":
        return np.asarray(f1.mean(axis=-1))
    if metric == "f1_weighted":
        return np.asarray((f1 * true_counts).sum(axis=-1) / total)
    raise ValueError(f"unknown gate metric {metric!r}; use accuracy, f1_macro or f1_weighted")


def score_metric(
    metric: str, y_true: np.ndarray, predicted: np.ndarray, num_classes: int | None = None
) -> float:
    """One metric of predicted ids against true ids."""
    classes = num_classes or int(max(np.max(y_true), np.max(predicted))) + 1
    return float(metric_from_confusion(metric, confusion_counts(y_true, predicted, classes)))


def class_recalls(y_true: np.ndarray, predicted: np.ndarray, num_classes: int) -> np.ndarray:
    """Recall per class id; NaN for a class absent from ``y_true``."""
    confusion = confusion_counts(y_true, predicted, num_classes)
    support = confusion.sum(axis=1).astype(float)
    return np.divide(
        np.diagonal(confusion).astype(float),
        support,
        out=np.full(num_classes, np.nan),
        where=support > 0,
    )


def mcnemar_exact(
    challenger_correct: np.ndarray,
    champion_correct: np.ndarray,
    alternative: Literal["less", "greater", "two-sided"] = "less",
) -> float:
    """Exact McNemar p-value from the discordant pairs (scipy's binomial test).

    ``alternative="less"`` (the gate's question, "is the challenger worse?") is
    P(X <= b) for X ~ Binomial(b + c, 1/2), b the examples only the challenger gets right;
    ``"greater"`` asks whether it is better; ``"two-sided"`` whether they differ.
    """
    challenger_only = int(np.sum(challenger_correct & ~champion_correct))
    champion_only = int(np.sum(~challenger_correct & champion_correct))
    discordant = challenger_only + champion_only
    if discordant == 0:
        return 1.0
    return float(stats.binomtest(challenger_only, discordant, 0.5, alternative=alternative).pvalue)


def bootstrap_metric_differences(
    y_true: np.ndarray,
    predicted_a: np.ndarray,
    predicted_b: np.ndarray,
    metric: str = "accuracy",
    num_classes: int | None = None,
    resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = BOOTSTRAP_SEED,
) -> np.ndarray:
    """metric(a) - metric(b) on each of ``resamples`` paired bootstrap resamples.

    Each resample draws test rows with replacement and scores both models on the same
    rows (so the pairing is kept). Vectorised: confusion matrices of all resamples come
    from one ``bincount`` per chunk (about 30 ms for 2000 resamples of 900 rows).
    """
    y_true, predicted_a, predicted_b = map(np.asarray, (y_true, predicted_a, predicted_b))
    if np.array_equal(predicted_a, predicted_b):
        return np.zeros(resamples)  # every resample has difference 0
    classes = num_classes or int(max(y_true.max(), predicted_a.max(), predicted_b.max())) + 1
    rng = np.random.default_rng(seed)
    rows_count = len(y_true)
    chunk = max(1, BOOTSTRAP_CHUNK_CELLS // max(rows_count, 1))
    differences = []
    for start in range(0, resamples, chunk):
        rows = rng.integers(0, rows_count, size=(min(chunk, resamples - start), rows_count))
        first = metric_from_confusion(metric, confusion_counts(y_true, predicted_a, classes, rows))
        second = metric_from_confusion(metric, confusion_counts(y_true, predicted_b, classes, rows))
        differences.append(first - second)
    return np.concatenate(differences)


def bootstrap_accuracy_difference(
    challenger_correct: np.ndarray,
    champion_correct: np.ndarray,
    confidence_level: float = 0.95,
    resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = BOOTSTRAP_SEED,
) -> tuple[float, float]:
    """Paired percentile-bootstrap interval of the accuracy difference."""
    truth = np.ones(len(challenger_correct), dtype=np.int64)
    differences = bootstrap_metric_differences(
        truth,
        np.asarray(challenger_correct, dtype=np.int64),
        np.asarray(champion_correct, dtype=np.int64),
        "accuracy",
        2,
        resamples,
        seed,
    )
    tail = (1 - confidence_level) / 2
    low, high = np.quantile(differences, [tail, 1 - tail])
    return float(low), float(high)


def paired_comparison(
    y_true: np.ndarray,
    challenger_pred: np.ndarray,
    champion_pred: np.ndarray,
    alpha: float,
    metric: str = "accuracy",
    num_classes: int | None = None,
    champion_version: str | None = None,
) -> PairedComparison:
    """McNemar and bootstrap statistics for two models scored on the same examples.

    The bootstrap interval is two-sided at ``1 - alpha``; ``upper_bound`` is the one-sided
    ``1 - alpha`` bound the gate tests.
    """
    if not (len(y_true) == len(challenger_pred) == len(champion_pred)):
        raise ValueError(
            f"paired comparison needs equal lengths, got {len(y_true)}, "
            f"{len(challenger_pred)}, {len(champion_pred)}"
        )
    y_true, challenger_pred, champion_pred = map(
        np.asarray, (y_true, challenger_pred, champion_pred)
    )
    classes = num_classes or int(max(y_true.max(), challenger_pred.max(), champion_pred.max())) + 1
    challenger_correct = challenger_pred == y_true
    champion_correct = champion_pred == y_true
    differences = bootstrap_metric_differences(
        y_true, challenger_pred, champion_pred, metric, classes
    )
    low, high, upper = np.quantile(differences, [alpha / 2, 1 - alpha / 2, 1 - alpha])
    challenger_accuracy = float(challenger_correct.mean())
    champion_accuracy = float(champion_correct.mean())
    challenger_metric = score_metric(metric, y_true, challenger_pred, classes)
    champion_metric = score_metric(metric, y_true, champion_pred, classes)
    return PairedComparison(
        challenger_accuracy=challenger_accuracy,
        champion_accuracy=champion_accuracy,
        difference=challenger_accuracy - champion_accuracy,
        challenger_only=int(np.sum(challenger_correct & ~champion_correct)),
        champion_only=int(np.sum(~challenger_correct & champion_correct)),
        mcnemar_p_value=mcnemar_exact(challenger_correct, champion_correct, "less"),
        ci_low=float(low),
        ci_high=float(high),
        confidence_level=1 - alpha,
        metric=metric,
        challenger_metric=challenger_metric,
        champion_metric=champion_metric,
        metric_difference=challenger_metric - champion_metric,
        upper_bound=float(upper),
        champion_version=champion_version,
    )


def majority_baseline(
    y_true: np.ndarray, challenger_pred: np.ndarray, labels: Sequence[str]
) -> BaselineComparison:
    """The challenger against always predicting the test split's most frequent class."""
    y_true, challenger_pred = np.asarray(y_true), np.asarray(challenger_pred)
    majority = int(np.bincount(y_true, minlength=len(labels)).argmax())
    baseline_correct = y_true == majority
    challenger_correct = challenger_pred == y_true
    baseline_accuracy = float(baseline_correct.mean())
    accuracy = float(challenger_correct.mean())
    headroom = 1.0 - baseline_accuracy
    return BaselineComparison(
        label=labels[majority],
        baseline_accuracy=baseline_accuracy,
        challenger_accuracy=accuracy,
        error_reduction=(accuracy - baseline_accuracy) / headroom if headroom > 0 else 0.0,
        challenger_only=int(np.sum(challenger_correct & ~baseline_correct)),
        baseline_only=int(np.sum(~challenger_correct & baseline_correct)),
        p_value=mcnemar_exact(challenger_correct, baseline_correct, "greater"),
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
    others = [p for p in (champion_pred, best_champion_pred) if p is not None]
    classes = len(labels) if labels else int(max(y_true.max(), challenger_pred.max())) + 1
    classes = max([classes] + [int(np.max(p)) + 1 for p in others])
    names = list(labels) if labels else [str(index) for index in range(classes)]
    challenger_accuracy = float(np.mean(challenger_pred == y_true))
    challenger_metric = score_metric(gate_cfg.metric, y_true, challenger_pred, classes)
    failed, recalls = floor_shortfalls(y_true, challenger_pred, names, gate_cfg)
    baseline = majority_baseline(y_true, challenger_pred, names)
    failed += baseline_shortfalls(baseline, gate_cfg)
    behaviour_failures = behaviour_shortfalls(
        behaviour_results or [], gate_cfg.min_behaviour_pass_rate, gate_cfg.behaviour_thresholds
    )
    failed += behaviour_failures
    comparisons: dict[str, PairedComparison | None] = {"current": None, "best": None}
    for key, predicted, version in (
        ("current", champion_pred, champion_version),
        ("best", best_champion_pred, best_champion_version),
    ):
        if predicted is not None:
            comparison = paired_comparison(
                y_true,
                challenger_pred,
                np.asarray(predicted),
                gate_cfg.significance,
                gate_cfg.metric,
                classes,
                version,
            )
            comparisons[key] = comparison
            failed += champion_shortfalls(comparison, gate_cfg, best=key == "best")
    current, best = comparisons["current"], comparisons["best"]
    parts = [describe_baseline(baseline)]
    parts.append(describe_comparison(current) if current else "no champion yet")
    if best is not None:
        parts.append(describe_comparison(best, f"best champion v{best.champion_version}"))
    promote = not failed
    headline = (
        f"{gate_cfg.metric} {challenger_metric:.4f} (accuracy {challenger_accuracy:.4f}) on "
        f"{len(y_true)} test examples"
    )
    if promote:
        reason = f"promoted: {headline}; {'; '.join(parts)}"
    else:
        reason = f"rejected: {'; '.join(failed)}; {headline}; {'; '.join(parts)}"
    return GateDecision(
        promote=promote,
        reason=reason,
        challenger_accuracy=challenger_accuracy,
        min_accuracy=gate_cfg.min_accuracy,
        tolerance=gate_cfg.tolerance,
        significance=gate_cfg.significance,
        comparison=current,
        failed_conditions=failed,
        behaviour_failures=behaviour_failures,
        champion_version=champion_version if current is not None else None,
        metric=gate_cfg.metric,
        challenger_metric=challenger_metric,
        test_examples=len(y_true),
        class_recall=recalls,
        majority=baseline,
        best_comparison=best,
        best_champion_version=best_champion_version if best is not None else None,
        settings=gate_cfg.model_dump(),
    )


def champion_predictions_on(
    client: MlflowClient,
    model_name: str,
    champion_version: str,
    report: EvaluationReport,
    batch_size: int,
) -> tuple[np.ndarray, bool, str]:
    """The champion's predicted ids on the challenger's test split.

    Reuses the champion's recorded predictions when its test split has the same md5;
    otherwise downloads the champion and re-scores it on the challenger's texts with the
    champion's own recorded inference settings (``inference.*`` tags: the token window and
    precision it is served with), not the challenger's.

    Returns:
        (predicted ids, whether it was re-scored, a note saying why).
    """
    from components import registry

    recorded = registry.recorded_predictions(client, model_name, champion_version)
    champion = registry.get_version(client, model_name, champion_version)
    champion_md5 = champion.tags.get("test_split_md5")
    if recorded is not None and champion_md5 == report.test_split_md5:
        return recorded["predicted"].to_numpy(), False, "champion scored on the same test split"
    max_length, precision = registry.recorded_inference_settings(champion.tags)
    window = "its tokenizer's window" if max_length is None else f"max_length {max_length}"
    note = (
        f"test split changed (champion md5 {champion_md5}, challenger md5 "
        f"{report.test_split_md5}): champion v{champion_version} re-scored on the "
        f"challenger's {len(report.texts)} test examples with its own settings "
        f"({window}, {precision})"
    )
    predicted = registry.score_version(client, model_name, champion, report.texts, batch_size)
    return predicted, True, note


def best_champion_predictions(
    client: MlflowClient, model_name: str, report: EvaluationReport, metric: str
) -> tuple[str | None, np.ndarray | None]:
    """The best former champion on the challenger's test split and its recorded predictions.

    Same md5 means the same texts and labels in the same order, so the recorded
    predictions pair up with the challenger's example by example.
    """
    from components import registry

    best = registry.best_former_champion(
        client, model_name, report.test_split_md5, metric, list(report.labels)
    )
    if best is None:
        return None, None
    recorded = registry.recorded_predictions(client, model_name, best.version)
    if recorded is None or len(recorded) != len(report.y_true):
        return None, None
    return str(best.version), recorded["predicted"].to_numpy()


def apply_gate(
    model_name: str,
    challenger_version: str,
    report: EvaluationReport,
    gate_cfg: GateConfig,
    *,
    batch_size: int = 64,
    client: MlflowClient | None = None,
    release: Release | None = None,
    state_dir: Path | None = None,
    by: str | None = None,
) -> GateDecision:
    """Run the gate for a registered challenger and move aliases if it passes.

    Order matters: read the champions, decide, record the decision on the challenger
    (tags ``gate.*`` and artifact ``gate/decision-v<N>.json``), and only then move
    ``champion`` (the old one becomes ``previous-champion``). Nothing before the move
    changes an alias, so a crash leaves the champion untouched; ``gate.state: done`` is
    written last, so the retrain flow gates a version again until its gate has finished.

    Args:
        model_name: registered model name (``registry.model_name``).
        challenger_version: the version registered by ``registry.register_challenger``.
        report: the challenger's evaluation on its test split (``report.texts`` are used to
            re-score the champion when its test split differs).
        gate_cfg: the ``gate`` config section.
        batch_size: batch size of a champion re-score (its other settings are its own).
        client: an MlflowClient; default uses the current tracking URI.
        release: builds (or finds) and checks the challenger's Bento before any alias
            moves (``serving/release.py``); None moves aliases without a Bento.
        state_dir: where the alias lock lives (default: the state folder).
        by: who asked, for the alias history (default: the OS user).

    Returns:
        The recorded decision (``decision.promote`` says whether it passed;
        ``decision.awaiting_review`` that ``pending-review`` moved instead of ``champion``).

    Raises:
        ServingError, AliasChanged: a passed challenger could not be moved to (see
            ``components.aliases.conclude_gate``); no alias moved.
    """
    from components import aliases, registry

    client = client or registry.make_client()
    champion = registry.version_by_alias(client, model_name, registry.CHAMPION)
    champion_pred = None
    rescored, note = False, ""
    champion_version = None if champion is None else str(champion.version)
    contender = champion_version is not None and champion_version != str(challenger_version)
    champion_labels = json.loads(champion.tags.get("labels", "null")) if champion else None
    if contender and champion_labels is not None and champion_labels != list(report.labels):
        # Class ids mean different classes: no paired comparison is possible, and a task
        # change is a reviewer's call (`ratchet registry promote N --force --reason ...`).
        decision = replace(
            compare_to_champion(
                report.y_true, report.predicted_ids, None, gate_cfg, labels=report.labels
            ),
            promote=False,
            reason=f"its labels {list(report.labels)} differ from champion "
            f"v{champion_version}'s {champion_labels}, so the two cannot be compared; a "
            "reviewer may promote it with --force",
            failed_conditions=["labels differ from the champion's"],
            challenger_version=str(challenger_version),
            champion_version=champion_version,
            test_split_md5=report.test_split_md5,
        )
    else:
        if contender and champion_version is not None:
            champion_pred, rescored, note = champion_predictions_on(
                client, model_name, champion_version, report, batch_size
            )
        best_version, best_pred = best_champion_predictions(
            client, model_name, report, gate_cfg.metric
        )
        decision = compare_to_champion(
            report.y_true,
            report.predicted_ids,
            champion_pred,
            gate_cfg,
            report.behaviour,
            labels=report.labels,
            champion_version=champion_version,
            best_champion_pred=best_pred,
            best_champion_version=best_version,
        )
        decision = replace(
            decision,
            challenger_version=str(challenger_version),
            champion_rescored=rescored,
            rescore_note=note,
            test_split_md5=report.test_split_md5,
        )
    return aliases.conclude_gate(
        client,
        model_name,
        str(challenger_version),
        decision,
        gate_cfg,
        expected_champion=champion_version,
        release=release,
        state_dir=state_dir or aliases.default_state_dir(),
        by=by,
    )


def promote_manually(
    model_name: str,
    version: str,
    gate_cfg: GateConfig,
    reason: str,
    by: str | None = None,
    force: bool = False,
    *,
    batch_size: int = 64,
    client: MlflowClient | None = None,
    release: Release | None = None,
    state_dir: Path | None = None,
) -> GateDecision:
    """A reviewer's promotion: through the same gate unless ``force``; who and why are tagged.

    Either way the version's Bento is built and checked (``release``) and the alias moves
    under the alias lock, after the champion was read again (``components/aliases.py``).

    Raises:
        RegistryError: no reason given, the version does not exist or is already champion.
        GateRejected: the gate refused the version (aliases unchanged).
        ServingError, AliasChanged: the Bento failed its check, or the champion moved
            meanwhile (aliases unchanged).
    """
    from components import aliases, registry
    from components.errors import GateRejected, RegistryError

    client = client or registry.make_client()
    if not reason.strip():
        raise RegistryError("a manual promotion needs a reason (--reason)")
    registry.get_version(client, model_name, version)
    if registry.aliases(client, model_name).get(registry.CHAMPION) == str(version):
        raise RegistryError(f"{model_name} v{version} is already the champion")
    if not force:
        report = registry.load_evaluation(client, model_name, version)
        decision = apply_gate(
            model_name,
            str(version),
            report,
            gate_cfg,
            batch_size=batch_size,
            client=client,
            release=release,
            state_dir=state_dir,
            by=by,
        )
        # Who asked and why, under a name that says whether it happened.
        action = "promotion" if decision.promote else "promotion_attempt"
        registry.record_actor(client, model_name, str(version), action, by, reason)
        if not decision.promote:
            raise GateRejected(f"{model_name} v{version} {decision.reason}")
        return decision
    registry.record_actor(client, model_name, str(version), "promotion", by, reason)
    tags = registry.version_tags(client, model_name, version)
    champion = registry.aliases(client, model_name).get(registry.CHAMPION)
    decision = GateDecision(
        promote=True,
        reason=f"promoted with --force by {by or 'current user'}: {reason}",
        challenger_accuracy=float(tags.get("metric.accuracy", "nan")),
        min_accuracy=gate_cfg.min_accuracy,
        tolerance=gate_cfg.tolerance,
        significance=gate_cfg.significance,
        challenger_version=str(version),
        champion_version=champion,
        forced=True,
        metric=gate_cfg.metric,
        challenger_metric=float(tags.get(f"metric.{gate_cfg.metric}", "nan")),
        test_split_md5=tags.get("test_split_md5"),
        settings=gate_cfg.model_dump(),
    )
    return aliases.conclude_gate(
        client,
        model_name,
        str(version),
        decision,
        gate_cfg,
        expected_champion=champion,
        release=release,
        state_dir=state_dir or aliases.default_state_dir(),
        by=by,
    )
