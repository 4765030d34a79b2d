"""The gate's statistics for token classifiers: entity micro-F1 compared over sentences.

Pure functions over tag sequences, the token counterpart of :mod:`components.gate_stats`
(not yet wired into :mod:`components.promotion`). Entity F1 is not a mean over sentences,
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

from components.gate_stats import BOOTSTRAP_CHUNK_CELLS, BOOTSTRAP_RESAMPLES, BOOTSTRAP_SEED
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
    wanted, found = sentence_entities(gold), sentence_entities(predicted)
    hits: dict[str, int] = {}
    totals: dict[str, int] = {}
    for g, p in zip(wanted, found, strict=True):
        for kind, start, end in g:
            totals[kind] = totals.get(kind, 0) + 1
            hits[kind] = hits.get(kind, 0) + ((kind, start, end) in p)
    return [
        f"{kind} recall {hits[kind] / totals[kind]:.3f} < {floor}"
        for kind in sorted(totals)
        if hits[kind] / totals[kind] < floor
    ]
