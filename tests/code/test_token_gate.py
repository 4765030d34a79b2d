"""Entity-F1 gate statistics: sentence bootstrap, the all-O baseline, per-type recall floors."""

from __future__ import annotations

import random

import pytest

from components.token_gate import (
    compare_entity_f1,
    micro_f1,
    sentence_counts,
    type_recall_shortfalls,
)
from tests.code.test_token_metrics import GOLD, PREDICTED


def toy_gold(count: int) -> list[list[str]]:
    return [["B-PER", "I-PER", "O", "O", "B-LOC", "O"] for _ in range(count)]


def test_summed_counts_give_seqeval_strict_f1() -> None:
    counts = sentence_counts(GOLD, PREDICTED)
    assert counts.tolist() == [[1, 2, 2], [0, 0, 1]]
    assert float(micro_f1(counts.sum(axis=0))) == pytest.approx(0.4)


def test_a_perfect_tagger_beats_the_all_o_baseline_significantly() -> None:
    gold = toy_gold(50)
    comparison = compare_entity_f1(gold, gold, None, alpha=0.05, resamples=500)
    assert (comparison.challenger_f1, comparison.other_f1) == (1.0, 0.0)
    assert comparison.lower_bound == 1.0  # every resample: 1 - 0


def test_identical_taggers_differ_by_nothing() -> None:
    gold = toy_gold(20)
    comparison = compare_entity_f1(gold, gold, gold, alpha=0.05, resamples=200)
    assert (comparison.difference, comparison.upper_bound, comparison.lower_bound) == (0, 0, 0)


def test_a_shuffled_tag_model_is_significantly_worse_than_the_champion() -> None:
    rng = random.Random(0)
    gold = toy_gold(60)
    shuffled = [rng.sample(tags, len(tags)) for tags in gold]
    comparison = compare_entity_f1(gold, shuffled, gold, alpha=0.05, resamples=500)
    assert comparison.challenger_f1 < 0.5
    assert comparison.upper_bound < 0  # the gate's "significantly worse" test
    assert comparison.ci_low <= comparison.difference <= comparison.ci_high


def test_unequal_lengths_are_refused() -> None:
    with pytest.raises(ValueError, match="equal lengths, got 2, 1, 2 sentences"):
        compare_entity_f1(GOLD, PREDICTED[:1], None, alpha=0.05)


def test_per_type_recall_floors() -> None:
    assert type_recall_shortfalls(GOLD, PREDICTED, 0.5) == [
        "LOC recall 0.000 < 0.5",
        "ORG recall 0.000 < 0.5",
    ]
    assert type_recall_shortfalls(GOLD, PREDICTED, None) == []
    assert type_recall_shortfalls(GOLD, GOLD, 1.0) == []
