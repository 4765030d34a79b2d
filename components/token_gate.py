"""The gate's statistics for token classifiers: entity micro-F1 compared over sentences.

Pure functions over tag sequences, the token counterpart of :mod:`components.gate_stats`
and :func:`components.gate.compare_to_champion`: :func:`compare_entities_to_champion` is
the gate's decision for a token classifier (``components/token_promotion.py`` is its I/O
shell, called by :func:`components.promotion.apply_gate`). Entity F1 is not a mean over sentences,
so the paired bootstrap resamples whole sentences and recomputes micro-F1 from the summed
per-sentence counts (true positives, predicted and gold entities, strict IOB2), scoring
both models on the same resampled sentences. The baseline is the all-``O`` tagger, whose
entity F1 is 0: a challenger beats it significantly when the one-sided lower bound of its
bootstrap F1 is above 0. Per-type recall floors use seqeval's strict counts.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from components.behaviour import CheckResult
from components.config import GateConfig
from components.gate import GateDecision, behaviour_shortfalls, champion_shortfalls
from components.gate_stats import (
    BOOTSTRAP_CHUNK_CELLS,
    BOOTSTRAP_RESAMPLES,
    BOOTSTRAP_SEED,
    PairedComparison,
    mcnemar_exact,
)
from components.token_evaluate import sentence_entities


@dataclass(frozen=True)
class EntityComparison:
    """Challenger vs another tagger on the same test sentences (entity micro-F1).

    Attributes:
        challenger_f1, other_f1, difference: the scores and challenger - other.
        ci_low, ci_high: two-sided paired bootstrap interval of the difference.
        upper_bound: one-sided upper bound (below 0: the challenger is significantly worse).
        lower_bound: one-sided lower bound (above 0: the challenger is significantly better).
    """

    challenger_f1: float
    other_f1: float
    difference: float
    ci_low: float
    ci_high: float
    upper_bound: float
    lower_bound: float
    confidence_level: float


def sentence_counts(
    gold: Sequence[Sequence[str]], predicted: Sequence[Sequence[str]]
) -> np.ndarray:
    """Per sentence (rows): true positives, predicted entities, gold entities."""
    wanted, found = sentence_entities(gold), sentence_entities(predicted)
    return np.array(
        [[len(g & p), len(p), len(g)] for g, p in zip(wanted, found, strict=True)],
        dtype=np.int64,
    ).reshape(-1, 3)


def micro_f1(counts: np.ndarray) -> np.ndarray:
    """Micro-F1 from summed counts (last axis: tp, predicted, gold); 0 where undefined."""
    true_positives, predicted, gold = counts[..., 0], counts[..., 1], counts[..., 2]
    total = predicted + gold
    return np.where(total > 0, 2 * true_positives / np.maximum(total, 1), 0.0)


def bootstrap_f1_differences(
    challenger: np.ndarray,
    other: np.ndarray,
    resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = BOOTSTRAP_SEED,
) -> np.ndarray:
    """F1(challenger) - F1(other) on ``resamples`` paired resamples of the sentences.

    Args:
        challenger, other: :func:`sentence_counts` of the two taggers on the same sentences.
    """
    sentences = len(challenger)
    rng = np.random.default_rng(seed)
    chunk = max(1, BOOTSTRAP_CHUNK_CELLS // max(sentences, 1))
    differences = []
    for start in range(0, resamples, chunk):
        rows = rng.integers(0, sentences, size=(min(chunk, resamples - start), sentences))
        differences.append(
            micro_f1(challenger[rows].sum(axis=1)) - micro_f1(other[rows].sum(axis=1))
        )
    return np.concatenate(differences)


def compare_entity_f1(
    gold: Sequence[Sequence[str]],
    challenger: Sequence[Sequence[str]],
    other: Sequence[Sequence[str]] | None,
    alpha: float,
    resamples: int = BOOTSTRAP_RESAMPLES,
) -> EntityComparison:
    """Paired bootstrap comparison of entity micro-F1; ``other`` None is the all-O tagger.

    Raises:
        ValueError: the taggers' outputs do not line up with the gold sentences.
    """
    baseline = [["O"] * len(tags) for tags in gold]
    other = baseline if other is None else other
    if not (len(gold) == len(challenger) == len(other)):
        raise ValueError(
            f"paired comparison needs equal lengths, got {len(gold)}, {len(challenger)}, "
            f"{len(other)} sentences"
        )
    challenger_counts = sentence_counts(gold, challenger)
    other_counts = sentence_counts(gold, other)
    differences = bootstrap_f1_differences(challenger_counts, other_counts, resamples)
    low, high, upper, lower = np.quantile(differences, [alpha / 2, 1 - alpha / 2, 1 - alpha, alpha])
    challenger_f1 = float(micro_f1(challenger_counts.sum(axis=0)))
    other_f1 = float(micro_f1(other_counts.sum(axis=0)))
    return EntityComparison(
        challenger_f1=challenger_f1,
        other_f1=other_f1,
        difference=challenger_f1 - other_f1,
        ci_low=float(low),
        ci_high=float(high),
        upper_bound=float(upper),
        lower_bound=float(lower),
        confidence_level=1 - alpha,
    )


def type_recall_shortfalls(
    gold: Sequence[Sequence[str]], predicted: Sequence[Sequence[str]], floor: float | None
) -> list[str]:
    """Entity types recalled (strict) less often than ``floor``, one line each."""
    if floor is None:
        return []
    recalls = type_recalls(gold, predicted)
    return [
        f"{kind} recall {value:.3f} < {floor}" for kind, value in recalls.items() if value < floor
    ]


def type_recalls(gold: Sequence[Sequence[str]], predicted: Sequence[Sequence[str]]) -> dict:
    """Strict recall of each entity type present in ``gold``."""
    wanted, found = sentence_entities(gold), sentence_entities(predicted)
    hits: dict[str, int] = {}
    totals: dict[str, int] = {}
    for g, p in zip(wanted, found, strict=True):
        for kind, start, end in g:
            totals[kind] = totals.get(kind, 0) + 1
            hits[kind] = hits.get(kind, 0) + ((kind, start, end) in p)
    return {kind: hits[kind] / totals[kind] for kind in sorted(totals)}


def sentences_right(
    gold: Sequence[Sequence[str]], predicted: Sequence[Sequence[str]]
) -> np.ndarray:
    """Per sentence, whether every word's tag is right."""
    return np.array([list(g) == list(p) for g, p in zip(gold, predicted, strict=True)], bool)


def entity_paired_comparison(
    gold: Sequence[Sequence[str]],
    challenger: Sequence[Sequence[str]],
    champion: Sequence[Sequence[str]],
    alpha: float,
    champion_version: str | None = None,
) -> PairedComparison:
    """The gate's paired statistics of two taggers, in the classifier's record: the metric
    is ``entity_f1`` (sentence bootstrap, :func:`compare_entity_f1`); accuracy and McNemar
    count whole sentences tagged right (every word), the paired unit the bootstrap uses."""
    entity = compare_entity_f1(gold, challenger, champion, alpha)
    challenger_right = sentences_right(gold, challenger)
    champion_right = sentences_right(gold, champion)
    challenger_accuracy = float(challenger_right.mean()) if len(gold) else 0.0
    champion_accuracy = float(champion_right.mean()) if len(gold) else 0.0
    return PairedComparison(
        challenger_accuracy=challenger_accuracy,
        champion_accuracy=champion_accuracy,
        difference=challenger_accuracy - champion_accuracy,
        challenger_only=int(np.sum(challenger_right & ~champion_right)),
        champion_only=int(np.sum(~challenger_right & champion_right)),
        mcnemar_p_value=mcnemar_exact(challenger_right, champion_right, "less"),
        ci_low=entity.ci_low,
        ci_high=entity.ci_high,
        confidence_level=entity.confidence_level,
        metric="entity_f1",
        challenger_metric=entity.challenger_f1,
        champion_metric=entity.other_f1,
        metric_difference=entity.difference,
        upper_bound=entity.upper_bound,
        champion_version=champion_version,
    )


def entity_floor_shortfalls(
    gold: Sequence[Sequence[str]],
    challenger: Sequence[Sequence[str]],
    gate_cfg: GateConfig,
) -> tuple[list[str], dict[str, float], EntityComparison]:
    """Test-set size, the entity-F1 floor, per-type recall, and the all-O baseline (the
    challenger must beat its F1 of 0 significantly): the failures, the type recalls and
    the comparison with the baseline."""
    failed = []
    if len(gold) < gate_cfg.min_test_examples:
        failed.append(
            f"the test split has {len(gold)} sentences, fewer than gate.min_test_examples="
            f"{gate_cfg.min_test_examples}: too few to gate on"
        )
    baseline = compare_entity_f1(gold, challenger, None, gate_cfg.significance)
    floor = gate_cfg.min_entity_f1
    if floor is not None and baseline.challenger_f1 < floor:
        failed.append(
            f"entity_f1 {baseline.challenger_f1:.4f} is below the floor {floor:.4f} "
            "(gate.min_entity_f1)"
        )
    if baseline.lower_bound <= 0:
        failed.append(
            "not significantly better than the all-O tagger (entity F1 0): one-sided "
            f"{baseline.confidence_level:.0%} bootstrap bound {baseline.lower_bound:+.4f} <= 0"
        )
    recalls = type_recalls(gold, challenger)
    failed += [
        f"recall of entity type '{kind}' {value:.4f} is below "
        f"gate.min_type_recall={gate_cfg.min_type_recall}"
        for kind, value in recalls.items()
        if gate_cfg.min_type_recall is not None and value < gate_cfg.min_type_recall
    ]
    return failed, recalls, baseline


def describe_entity_comparison(comparison: PairedComparison, against: str) -> str:
    return (
        f"entity_f1 {comparison.metric_difference:+.4f} vs {against} "
        f"{comparison.champion_metric:.4f} ({comparison.confidence_level:.0%} bootstrap CI "
        f"[{comparison.ci_low:+.4f}, {comparison.ci_high:+.4f}] over sentences; sentences "
        f"tagged right {comparison.difference:+.4f}, {comparison.challenger_only} vs "
        f"{comparison.champion_only} discordant)"
    )


def compare_entities_to_champion(
    gold: Sequence[Sequence[str]],
    challenger: Sequence[Sequence[str]],
    champion: Sequence[Sequence[str]] | None,
    gate_cfg: GateConfig,
    behaviour_results: Sequence[CheckResult] | None = None,
    *,
    champion_version: str | None = None,
    best_champion: Sequence[Sequence[str]] | None = None,
    best_champion_version: str | None = None,
) -> GateDecision:
    """Decide whether a token classifier may replace the champion: the conditions of
    :func:`components.gate.compare_to_champion` with NER's own floors and baseline
    (``gate.min_entity_f1``, ``gate.min_type_recall``, the all-O tagger) and entity
    micro-F1 as the compared metric (tolerance, significantly worse, best champion).

    Args:
        gold: the test split's tags, per sentence.
        challenger: the challenger's tags on it.
        champion: the current champion's tags on the same sentences (None: no champion).
        gate_cfg: the ``gate`` section.
        behaviour_results: the challenger's NER behavioural checks.
        champion_version, best_champion, best_champion_version: as in
            :func:`components.gate.compare_to_champion`, with tags for predicted ids.
    """
    failed, recalls, baseline = entity_floor_shortfalls(gold, challenger, gate_cfg)
    behaviour_failures = behaviour_shortfalls(
        behaviour_results or [], gate_cfg.min_behaviour_pass_rate, gate_cfg.behaviour_thresholds
    )
    failed += behaviour_failures
    alpha = gate_cfg.significance
    current = best = None
    parts = [
        f"the all-O tagger scores entity F1 0; the challenger's one-sided "
        f"{baseline.confidence_level:.0%} bootstrap bound is {baseline.lower_bound:+.4f}"
    ]
    if champion is not None:
        current = entity_paired_comparison(gold, challenger, champion, alpha, champion_version)
        failed += champion_shortfalls(current, gate_cfg)
    parts.append(describe_entity_comparison(current, "champion") if current else "no champion yet")
    if best_champion is not None:
        best = entity_paired_comparison(
            gold, challenger, best_champion, alpha, best_champion_version
        )
        failed += champion_shortfalls(best, gate_cfg, best=True)
        parts.append(describe_entity_comparison(best, f"best champion v{best_champion_version}"))
    words = sum(len(tags) for tags in gold)
    word_accuracy = sum(
        g == p for gs, ps in zip(gold, challenger, strict=True) for g, p in zip(gs, ps, strict=True)
    ) / max(words, 1)
    headline = f"entity_f1 {baseline.challenger_f1:.4f} on {len(gold)} test sentences"
    outcome = "rejected: " + "; ".join(failed) + "; " if failed else "promoted: "
    return GateDecision.under(
        gate_cfg,
        promote=not failed,
        reason=f"{outcome}{headline}; {'; '.join(parts)}",
        challenger_accuracy=float(word_accuracy),
        comparison=current,
        failed_conditions=failed,
        behaviour_failures=behaviour_failures,
        champion_version=champion_version if current is not None else None,
        challenger_metric=baseline.challenger_f1,
        test_examples=len(gold),
        class_recall=recalls,
        best_comparison=best,
        best_champion_version=best_champion_version if best is not None else None,
    )
