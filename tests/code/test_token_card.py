"""The model card of a token classifier: entity types, per-type scores, NER limitations."""

from __future__ import annotations

from components.model_card import CardInputs, render_model_card
from components.token_evaluate import entity_metrics

GOLD = [["B-PER", "I-PER", "O", "B-LOC"], ["B-ORG", "O", "B-LOC", "O"]]
PREDICTED = [["B-PER", "I-PER", "O", "B-LOC"], ["O", "O", "B-PER", "O"]]


def test_the_card_lists_per_type_scores() -> None:
    card = render_model_card(
        CardInputs(
            model_name="ratchet-conll",
            version="4",
            labels=["O", "B-LOC", "I-LOC", "B-ORG", "I-ORG", "B-PER", "I-PER"],
            metrics=entity_metrics(GOLD, PREDICTED),
            lineage={},
            data_source="conll2003",
            base_model="tiny",
            training={"epochs": 1},
            task="token-classification",
        )
    )
    assert "Token classifier (NER) of 3 entity types: LOC, ORG, PER." in card
    assert "### Per entity type" in card and "### Per class" not in card
    assert "| LOC | 1.0000 | 0.5000 | 0.6667 | 2 |" in card
    assert "| ORG | 0.0000 | 0.0000 | 0.0000 | 1 |" in card
    assert "| PER | 0.5000 | 1.0000 | 0.6667 | 1 |" in card
    assert "| entity_f1 | 0.5714 |" in card and "| f1 | 0.5714 |" in card
    assert "the all-O tagger baseline" in card
    assert "Words beyond the token window (model.max_length) are tagged O." in card
