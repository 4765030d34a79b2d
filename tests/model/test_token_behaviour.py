"""NER behavioural checks: the shipped CoNLL suite, an all-O tagger, choosing by labels."""

from __future__ import annotations

from pathlib import Path

import pytest

from components.behaviour import suite_for_labels
from components.config import GateConfig
from components.errors import ConfigError
from components.gate import behaviour_shortfalls
from components.token_behaviour import (
    load_entity_suite,
    run_entity_suite,
    split_words,
    token_suite_for_labels,
)
from components.token_gate import compare_entities_to_champion
from tests.code.test_token_gate import toy_gold
from tests.conftest import PROJECT_ROOT

CONLL_TAGS = ["O", "B-LOC", "I-LOC", "B-MISC", "I-MISC", "B-ORG", "I-ORG", "B-PER", "I-PER"]
SUITE = "configs/behaviour/ner-conll-en.yaml"
# Who is who in the suite's sentences, as a perfect tagger would know.
KNOWN = {
    "PER": ["John Smith", "Ahmed Khan", "Maria Garcia", "Olga Petrova", "Peter Brown"],
    "LOC": ["Paris", "Madrid", "London", "Berlin", "Tokyo"],
}


def all_o(sentences: list[list[str]]) -> list[list[str]]:
    return [["O"] * len(words) for words in sentences]


def gazetteer(sentences: list[list[str]]) -> list[list[str]]:
    """Tags the names in KNOWN (and nothing else)."""
    tagged = []
    for words in sentences:
        tags = ["O"] * len(words)
        for kind, names in KNOWN.items():
            for name in names:
                parts = name.split()
                for start in range(len(words) - len(parts) + 1):
                    if words[start : start + len(parts)] == parts:
                        tags[start : start + len(parts)] = [f"B-{kind}"] + [f"I-{kind}"] * (
                            len(parts) - 1
                        )
        tagged.append(tags)
    return tagged


def test_the_conll_suite_fails_an_all_o_tagger_on_every_case() -> None:
    suite = load_entity_suite(PROJECT_ROOT / SUITE)
    results = run_entity_suite(suite, CONLL_TAGS, all_o)
    assert [(result.name, result.passed) for result in results] == [
        ("mft_person_and_place", 0),
        ("mft_organisation", 0),
        ("mft_miscellaneous", 0),
        ("inv_person_name", 0),
        ("inv_neutral_clause", 0),
    ]
    assert results[0].failures[0] == {
        "text": "John Smith moved to Paris .",
        "missing": [["PER", "John Smith"], ["LOC", "Paris"]],
        "got": [],
    }
    gated = [line.split(" passed")[0] for line in behaviour_shortfalls(results, None)]
    assert gated == [
        "behaviour check mft_person_and_place",
        "behaviour check mft_organisation",
        "behaviour check inv_person_name",
        "behaviour check inv_neutral_clause",
    ]
    # The gate rejects on them even where the test split alone would promote.
    gold = toy_gold(40)
    decision = compare_entities_to_champion(gold, gold, None, GateConfig(), results)
    assert not decision.promote and decision.behaviour_failures[0].startswith(
        "behaviour check mft_person_and_place passed 0.0% (0/5)"
    )


def test_a_tagger_that_knows_the_names_passes_the_person_and_place_checks() -> None:
    suite = load_entity_suite(PROJECT_ROOT / SUITE)
    results = {r.name: r for r in run_entity_suite(suite, CONLL_TAGS, gazetteer)}
    assert results["mft_person_and_place"].passed == 3  # Anna Schmidt, David Lee unknown
    assert results["inv_neutral_clause"].passed == 4  # Microsoft: no entity, so no pass
    # A swapped-in name it does not know loses the PER span (Kenji Watanabe); where the
    # original's name was unknown too, only the place is kept, which INV accepts.
    assert results["inv_person_name"].passed == 4
    assert results["inv_person_name"].failures == [
        {
            "original": "Peter Brown flew to London on Monday .",
            "changed": "Kenji Watanabe flew to London on Monday .",
            "before": [("PER", "Peter Brown"), ("LOC", "London")],
            "after": [("LOC", "London")],
        }
    ]


def test_words_split_as_conll_does() -> None:
    assert split_words("Peter Brown flew to London, a day early.") == [
        "Peter", "Brown", "flew", "to", "London", ",", "a", "day", "early", ".",
    ]  # fmt: skip
    assert split_words("O'Neill's U.S. trip") == ["O'Neill's", "U.S", ".", "trip"]


def test_suites_are_chosen_by_labels() -> None:
    suite, notice = token_suite_for_labels("auto", CONLL_TAGS, PROJECT_ROOT)
    assert suite is not None and suite.labels == ["LOC", "MISC", "ORG", "PER"]
    assert notice == f"eval.behaviour_checks auto: {SUITE} matches labels {suite.labels}"
    none, notice = token_suite_for_labels("auto", ["O", "B-GENE", "I-GENE"], PROJECT_ROOT)
    assert none is None and notice.startswith("eval.behaviour_checks is auto and no shipped")
    # The text suites' auto choice never reads the NER suite, and vice versa.
    sentiment, _ = suite_for_labels("auto", ["negative", "positive"], PROJECT_ROOT)
    assert sentiment is not None and sentiment.task == "sst2"
    with pytest.raises(ConfigError, match=r"a suite for labels \['LOC', 'MISC', 'ORG', 'PER'\]"):
        token_suite_for_labels(SUITE, ["O", "B-GENE", "I-GENE"], PROJECT_ROOT)
    with pytest.raises(ConfigError, match="invalid NER behaviour suite"):
        token_suite_for_labels("configs/behaviour/sentiment-en.yaml", CONLL_TAGS, PROJECT_ROOT)


def test_a_malformed_suite_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "ner.yaml"
    path.write_text(
        "task: token-classification\nlabels: [PER]\nchecks:\n"
        "  - {name: x, type: MFT, cases: [{text: Ann, entities: [[LOC, Ann]]}]}\n"
    )
    with pytest.raises(ConfigError, match="names unknown types"):
        load_entity_suite(path)
    with pytest.raises(ConfigError, match="behaviour checks file not found"):
        load_entity_suite(tmp_path / "missing.yaml")
