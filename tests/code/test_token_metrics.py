"""Entity scores on hand-made cases: strict IOB2 as seqeval counts it, per type, errors."""

from __future__ import annotations

import pytest

from components.token_evaluate import entity_errors, entity_metrics, type_confusion

TOKENS = [["John", "Smith", "visited", "Paris"], ["Acme", "grew"]]
GOLD = [["B-PER", "I-PER", "O", "B-LOC"], ["B-ORG", "O"]]
# PER right; Paris typed ORG; an I-ORG that opens an entity is no entity in strict IOB2.
PREDICTED = [["B-PER", "I-PER", "O", "B-ORG"], ["I-ORG", "O"]]


def test_micro_scores_are_strict_iob2_and_match_seqeval() -> None:
    from seqeval.metrics import f1_score, precision_score, recall_score
    from seqeval.scheme import IOB2

    metrics = entity_metrics(GOLD, PREDICTED)
    # gold: PER, LOC, ORG; predicted (strict): PER, ORG(Paris); 1 correct.
    assert metrics["entity_precision"] == pytest.approx(1 / 2)
    assert metrics["entity_recall"] == pytest.approx(1 / 3)
    assert metrics["entity_f1"] == pytest.approx(0.4)
    assert metrics["f1"] == metrics["entity_f1"]
    strict = {"mode": "strict", "scheme": IOB2}
    assert metrics["entity_f1"] == pytest.approx(f1_score(GOLD, PREDICTED, **strict))
    assert metrics["entity_precision"] == pytest.approx(precision_score(GOLD, PREDICTED, **strict))
    assert metrics["entity_recall"] == pytest.approx(recall_score(GOLD, PREDICTED, **strict))
    # The lenient (conlleval) count would accept the I-ORG entity: 2 of 3 correct.
    assert f1_score(GOLD, PREDICTED) == pytest.approx(2 / 3)
    assert metrics["token_accuracy"] == pytest.approx(4 / 6)


def test_per_type_scores_and_macro_f1() -> None:
    metrics = entity_metrics(GOLD, PREDICTED)
    assert (metrics["entity_f1.PER"], metrics["entity_f1.LOC"], metrics["entity_f1.ORG"]) == (
        1.0,
        0.0,
        0.0,
    )
    assert metrics["entity_support.LOC"] == 1.0
    assert metrics["entity_f1_macro"] == pytest.approx(1 / 3)


def test_perfect_and_empty_predictions() -> None:
    assert entity_metrics(GOLD, GOLD)["entity_f1"] == 1.0
    all_o = [["O"] * len(tags) for tags in GOLD]
    assert entity_metrics(GOLD, all_o)["entity_f1"] == 0.0  # the all-O baseline


def test_missed_and_spurious_entities() -> None:
    missed, spurious = entity_errors(TOKENS, GOLD, PREDICTED, top=10)
    assert sorted(map(tuple, missed.to_numpy().tolist())) == [
        ("LOC", "Paris", 1),
        ("ORG", "Acme", 1),
    ]
    assert spurious.to_numpy().tolist() == [["ORG", "Paris", 1]]


def test_word_level_type_confusion() -> None:
    confusion = type_confusion(GOLD, PREDICTED, ["LOC", "ORG", "PER"])
    assert confusion.loc["LOC", "ORG"] == 1
    assert confusion.loc["ORG", "ORG"] == 1  # the word is ORG either way, the span is not
    assert confusion.loc["PER", "PER"] == 2
    assert confusion.loc["O", "O"] == 2
    assert int(confusion.to_numpy().sum()) == 6
