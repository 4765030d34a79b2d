"""The promotion gate: a challenger becomes champion only if it is not worse.

:func:`compare_to_champion` is the pure decision. It pairs the challenger's and the
champion's predictions on the *same* test examples and promotes only when

1. the challenger's accuracy clears ``gate.min_accuracy`` (the floor; with no champion yet,
   the floor alone decides),
2. every behavioural check with a threshold (its ``min_pass_rate``, else
   ``gate.min_behaviour_pass_rate``) passes at least that share of its cases, and
3. against a champion: accuracy is not lower by more than ``gate.tolerance``, and not lower
   with significance (exact McNemar test, ``p < gate.significance``).

The decision also reports a paired bootstrap confidence interval of the accuracy difference.

:func:`apply_gate` is the thin shell around it: it finds the champion, re-scores it on the
challenger's test split when the splits differ (and says so), records the decision on the
challenger's model version (tags and a JSON artifact) and, last of all, moves the aliases.
A crash anywhere before that last step leaves ``champion`` where it was.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

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


@dataclass(frozen=True)
class PairedComparison:
    """Challenger vs champion on the same examples.

    Attributes:
        challenger_only: examples only the challenger gets right (McNemar's b).
        champion_only: examples only the champion gets right (McNemar's c).
        mcnemar_p_value: exact two-sided McNemar p-value (binomial test on b of b + c).
        ci_low, ci_high: paired bootstrap interval of accuracy(challenger) - accuracy(champion).
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


@dataclass(frozen=True)
class GateDecision:
    """The outcome of the gate, with every number that led to it."""

    promote: bool
    reason: str
    challenger_accuracy: float
    min_accuracy: float
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
    awaiting_review: bool = False  # passed, but gate.require_approval: a reviewer decides

    @property
    def outcome(self) -> str:
        if self.promote and self.awaiting_review:
            return "pending-review"
        return "promoted" if self.promote else "rejected"

    def to_dict(self) -> dict[str, Any]:
        return {"outcome": self.outcome, **asdict(self)}


def mcnemar_exact(challenger_correct: np.ndarray, champion_correct: np.ndarray) -> float:
    """Exact two-sided McNemar p-value from the discordant pairs (scipy's binomial test)."""
    challenger_only = int(np.sum(challenger_correct & ~champion_correct))
    champion_only = int(np.sum(~challenger_correct & champion_correct))
    discordant = challenger_only + champion_only
    if discordant == 0:
        return 1.0
    return float(stats.binomtest(challenger_only, discordant, 0.5).pvalue)


def bootstrap_accuracy_difference(
    challenger_correct: np.ndarray,
    champion_correct: np.ndarray,
    confidence_level: float = 0.95,
    resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = BOOTSTRAP_SEED,
) -> tuple[float, float]:
    """Paired percentile-bootstrap interval of the accuracy difference (scipy.stats.bootstrap)."""
    if np.array_equal(challenger_correct, champion_correct):
        return 0.0, 0.0  # every resample has difference 0; scipy warns on degenerate data

    def difference(a: np.ndarray, b: np.ndarray, axis: int) -> np.ndarray:
        return np.asarray(np.mean(a, axis=axis) - np.mean(b, axis=axis))

    result = stats.bootstrap(
        (challenger_correct.astype(float), champion_correct.astype(float)),
        difference,
        paired=True,
        vectorized=True,
        n_resamples=resamples,
        confidence_level=confidence_level,
        method="percentile",
        rng=np.random.default_rng(seed),
    )
    return float(result.confidence_interval.low), float(result.confidence_interval.high)


def paired_comparison(
    y_true: np.ndarray, challenger_pred: np.ndarray, champion_pred: np.ndarray, alpha: float
) -> PairedComparison:
    """McNemar and bootstrap statistics for two models scored on the same examples."""
    if not (len(y_true) == len(challenger_pred) == len(champion_pred)):
        raise ValueError(
            f"paired comparison needs equal lengths, got {len(y_true)}, "
            f"{len(challenger_pred)}, {len(champion_pred)}"
        )
    challenger_correct = np.asarray(challenger_pred) == np.asarray(y_true)
    champion_correct = np.asarray(champion_pred) == np.asarray(y_true)
    low, high = bootstrap_accuracy_difference(challenger_correct, champion_correct, 1 - alpha)
    challenger_accuracy = float(challenger_correct.mean())
    champion_accuracy = float(champion_correct.mean())
    return PairedComparison(
        challenger_accuracy=challenger_accuracy,
        champion_accuracy=champion_accuracy,
        difference=challenger_accuracy - champion_accuracy,
        challenger_only=int(np.sum(challenger_correct & ~champion_correct)),
        champion_only=int(np.sum(~challenger_correct & champion_correct)),
        mcnemar_p_value=mcnemar_exact(challenger_correct, champion_correct),
        ci_low=low,
        ci_high=high,
        confidence_level=1 - alpha,
    )


def behaviour_shortfalls(
    results: Sequence[CheckResult], default_min_pass_rate: float | None
) -> list[str]:
    """One line per behavioural check below its threshold."""
    shortfalls = []
    for result in results:
        threshold = (
            result.min_pass_rate if result.min_pass_rate is not None else default_min_pass_rate
        )
        if threshold is not None and result.pass_rate < threshold:
            shortfalls.append(
                f"behaviour check {result.name} passed {result.pass_rate:.1%} "
                f"({result.passed}/{result.cases}) < required {threshold:.1%}"
            )
    return shortfalls


def describe_comparison(comparison: PairedComparison) -> str:
    return (
        f"{comparison.difference:+.4f} vs champion {comparison.champion_accuracy:.4f} "
        f"({comparison.confidence_level:.0%} bootstrap CI [{comparison.ci_low:+.4f}, "
        f"{comparison.ci_high:+.4f}], McNemar p={comparison.mcnemar_p_value:.3g}, "
        f"{comparison.challenger_only} vs {comparison.champion_only} discordant)"
    )


def compare_to_champion(
    y_true: np.ndarray,
    challenger_pred: np.ndarray,
    champion_pred: np.ndarray | None,
    gate_cfg: GateConfig,
    behaviour_results: Sequence[CheckResult] | None = None,
) -> GateDecision:
    """Decide whether the challenger may replace the champion.

    Args:
        y_true: true class ids of the test split.
        challenger_pred: the challenger's predicted ids on it.
        champion_pred: the champion's predicted ids on the same examples; None when there
            is no champion yet (then the floor and behaviour thresholds alone decide).
        gate_cfg: floor, tolerance, significance level, behaviour threshold.
        behaviour_results: the challenger's behavioural check results.

    Returns:
        The decision; ``reason`` states the outcome and the numbers behind it.
    """
    y_true = np.asarray(y_true)
    challenger_accuracy = float(np.mean(np.asarray(challenger_pred) == y_true))
    failed = []
    if challenger_accuracy < gate_cfg.min_accuracy:
        failed.append(
            f"accuracy {challenger_accuracy:.4f} is below the floor {gate_cfg.min_accuracy:.4f}"
        )
    behaviour_failures = behaviour_shortfalls(
        behaviour_results or [], gate_cfg.min_behaviour_pass_rate
    )
    failed += behaviour_failures
    comparison = None
    if champion_pred is not None:
        comparison = paired_comparison(
            y_true, np.asarray(challenger_pred), np.asarray(champion_pred), gate_cfg.significance
        )
        if comparison.difference < -gate_cfg.tolerance:
            failed.append(
                f"accuracy {challenger_accuracy:.4f} is {-comparison.difference:.4f} below the "
                f"champion's {comparison.champion_accuracy:.4f} (tolerance {gate_cfg.tolerance})"
            )
        elif comparison.difference < 0 and comparison.mcnemar_p_value < gate_cfg.significance:
            failed.append(
                f"significantly worse than the champion (McNemar p="
                f"{comparison.mcnemar_p_value:.3g} < {gate_cfg.significance})"
            )
    promote = not failed
    versus = describe_comparison(comparison) if comparison else "no champion yet"
    if promote:
        reason = (
            f"promoted: accuracy {challenger_accuracy:.4f} >= floor {gate_cfg.min_accuracy:.4f}; "
            f"{versus}"
        )
    else:
        reason = f"rejected: {'; '.join(failed)}; {versus}"
    return GateDecision(
        promote=promote,
        reason=reason,
        challenger_accuracy=challenger_accuracy,
        min_accuracy=gate_cfg.min_accuracy,
        tolerance=gate_cfg.tolerance,
        significance=gate_cfg.significance,
        comparison=comparison,
        failed_conditions=failed,
        behaviour_failures=behaviour_failures,
    )


def champion_predictions_on(
    client: MlflowClient,
    model_name: str,
    champion_version: str,
    report: EvaluationReport,
    batch_size: int,
    max_length: int | None,
) -> tuple[np.ndarray, bool, str]:
    """The champion's predicted ids on the challenger's test split.

    Reuses the champion's recorded predictions when its test split has the same md5;
    otherwise downloads the champion and re-scores it on the challenger's texts.

    Returns:
        (predicted ids, whether it was re-scored, a note saying why).
    """
    from components import registry
    from components.evaluate import score_texts

    recorded = registry.recorded_predictions(client, model_name, champion_version)
    champion_md5 = registry.version_tags(client, model_name, champion_version).get("test_split_md5")
    if recorded is not None and champion_md5 == report.test_split_md5:
        return recorded["predicted"].to_numpy(), False, "champion scored on the same test split"
    note = (
        f"test split changed (champion md5 {champion_md5}, challenger md5 "
        f"{report.test_split_md5}): champion v{champion_version} re-scored on the "
        f"challenger's {len(report.texts)} test examples"
    )
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = registry.download_version(client, model_name, champion_version, Path(tmp))
        probabilities = score_texts(model_dir, report.texts, batch_size, max_length)
    return probabilities.argmax(axis=1), True, note


def apply_gate(
    model_name: str,
    challenger_version: str,
    report: EvaluationReport,
    gate_cfg: GateConfig,
    *,
    batch_size: int = 64,
    max_length: int | None = None,
    client: MlflowClient | None = None,
    release: Release | None = None,
    state_dir: Path | None = None,
    by: str | None = None,
) -> GateDecision:
    """Run the gate for a registered challenger and move aliases if it passes.

    Order matters: read the champion, decide, record the decision on the challenger
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
        batch_size, max_length: scoring settings for a champion re-score.
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
            compare_to_champion(report.y_true, report.predicted_ids, None, gate_cfg),
            promote=False,
            reason=f"its labels {list(report.labels)} differ from champion "
            f"v{champion_version}'s {champion_labels}, so the two cannot be compared; a "
            "reviewer may promote it with --force",
            failed_conditions=["labels differ from the champion's"],
            challenger_version=str(challenger_version),
            champion_version=champion_version,
        )
    else:
        if contender and champion_version is not None:
            champion_pred, rescored, note = champion_predictions_on(
                client, model_name, champion_version, report, batch_size, max_length
            )
        decision = compare_to_champion(
            report.y_true, report.predicted_ids, champion_pred, gate_cfg, report.behaviour
        )
        decision = replace(
            decision,
            challenger_version=str(challenger_version),
            champion_version=champion_version if champion_pred is not None else None,
            champion_rescored=rescored,
            rescore_note=note,
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
    max_length: int | None = None,
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
            max_length=max_length,
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
