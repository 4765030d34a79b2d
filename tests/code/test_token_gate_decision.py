"""The gate's decision for token classifiers: NER's floors, the all-O baseline, champions."""

from __future__ import annotations

import random

import pytest

from components.config import GateConfig
from components.gate_stats import PairedComparison
from components.token_gate import compare_entities_to_champion, entity_paired_comparison
from tests.code.test_token_gate import toy_gold

GATE = GateConfig(metric="entity_f1", min_test_examples=10)


def shuffled(gold: list[list[str]], seed: int = 0) -> list[list[str]]:
    rng = random.Random(seed)
    return [rng.sample(tags, len(tags)) for tags in gold]


def test_a_good_tagger_without_champion_is_promoted() -> None:
    gold = toy_gold(40)
    decision = compare_entities_to_champion(gold, gold, None, GATE)
    assert decision.promote, decision.reason
    assert decision.reason.startswith("promoted: entity_f1 1.0000 on 40 test sentences;")
    assert (decision.metric, decision.challenger_metric) == ("entity_f1", 1.0)
    assert decision.class_recall == {"LOC": 1.0, "PER": 1.0}
    assert decision.comparison is None and decision.test_examples == 40


def test_an_all_o_tagger_fails_the_floors() -> None:
    gold = toy_gold(40)
    all_o = [["O"] * len(tags) for tags in gold]
    decision = compare_entities_to_champion(gold, all_o, None, GATE)
    assert not decision.promote
    assert decision.failed_conditions == [
        "entity_f1 0.0000 is below the floor 0.5000 (gate.min_entity_f1)",
        "not significantly better than the all-O tagger (entity F1 0): one-sided 95% "
        "bootstrap bound +0.0000 <= 0",
        "recall of entity type 'LOC' 0.0000 is below gate.min_type_recall=0.05",
        "recall of entity type 'PER' 0.0000 is below gate.min_type_recall=0.05",
    ]


def test_a_tagger_that_never_finds_one_type_fails_the_type_recall_floor() -> None:
    gold = toy_gold(40)
    no_loc = [[tag if "LOC" not in tag else "O" for tag in tags] for tags in gold]
    decision = compare_entities_to_champion(gold, no_loc, None, GATE)
    assert decision.failed_conditions == [
        "recall of entity type 'LOC' 0.0000 is below gate.min_type_recall=0.05"
    ]
    relaxed = GATE.model_copy(update={"min_type_recall": None})
    assert compare_entities_to_champion(gold, no_loc, None, relaxed).promote


def test_a_shuffled_tag_model_is_rejected_as_significantly_worse_than_the_champion() -> None:
    gold = toy_gold(60)
    # A tolerance wider than the drop: the significance test alone rejects it.
    relaxed = GATE.model_copy(
        update={"min_entity_f1": None, "min_type_recall": None, "tolerance": 0.9}
    )
    decision = compare_entities_to_champion(
        gold, shuffled(gold), gold, relaxed, champion_version="3"
    )
    assert not decision.promote
    comparison = decision.comparison
    assert isinstance(comparison, PairedComparison)
    assert (comparison.metric, comparison.champion_metric) == ("entity_f1", 1.0)
    assert comparison.upper_bound < 0 and comparison.champion_version == "3"
    assert any(
        line.startswith("significantly worse than the champion v3 on entity_f1")
        for line in decision.failed_conditions
    )
    assert decision.champion_version == "3"
    drop = compare_entities_to_champion(gold, shuffled(gold), gold, GATE, champion_version="3")
    assert f"below the champion v3's 1.0000 (tolerance {GATE.tolerance})" in drop.reason


def test_the_tolerance_is_a_budget_against_the_best_champion() -> None:
    gold = toy_gold(100)
    # One sentence in a hundred loses its LOC: F1 drops by about 0.0033 against both.
    worse = [
        tags if index else ["B-PER", "I-PER", "O", "O", "O", "O"] for index, tags in enumerate(gold)
    ]
    within = compare_entities_to_champion(
        gold, worse, gold, GATE, champion_version="2", best_champion=gold, best_champion_version="1"
    )
    assert within.promote, within.reason
    assert within.best_comparison is not None and within.best_champion_version == "1"
    strict = GATE.model_copy(update={"tolerance": 0.001})
    beyond = compare_entities_to_champion(
        gold,
        worse,
        gold,
        strict,
        champion_version="2",
        best_champion=gold,
        best_champion_version="1",
    )
    assert "below the best champion v1 on this test split's 1.0000 (tolerance 0.001)" in (
        beyond.reason
    )


def test_sentence_accuracy_and_mcnemar_count_whole_sentences() -> None:
    gold = toy_gold(10)
    half = [tags if index % 2 else ["O"] * 6 for index, tags in enumerate(gold)]
    comparison = entity_paired_comparison(gold, half, gold, 0.05)
    assert (comparison.challenger_accuracy, comparison.champion_accuracy) == (0.5, 1.0)
    assert (comparison.challenger_only, comparison.champion_only) == (0, 5)
    assert comparison.mcnemar_p_value == pytest.approx(0.5**5)
