"""CheckList-style behavioural checks: the SST-2 suite loads, and each check type scores."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from components.behaviour import (
    behaviour_metrics,
    load_behaviour_suite,
    run_behaviour_suite,
)
from components.errors import ConfigError
from tests.conftest import PROJECT_ROOT, train_tiny_classifier

SST2_SUITE = PROJECT_ROOT / "configs" / "behaviour" / "sentiment-en.yaml"
POSITIVE = {"wonderful", "brilliant", "delight", "superb", "loved", "great", "good", "liked"}


def keyword_model(texts: list[str]) -> np.ndarray:
    """Positive iff a praise word occurs and no 'not' does: passes MFT/INV, half of DIR."""
    rows = []
    for text in texts:
        words = set(text.split())
        score = 0.9 if words & POSITIVE and "not" not in words else 0.2
        rows.append([1 - score, score])
    return np.array(rows)


def test_sst2_suite_has_every_check_type_with_enough_cases() -> None:
    suite = load_behaviour_suite(SST2_SUITE)
    assert suite.labels == ["negative", "positive"]
    kinds = {check.type for check in suite.checks}
    assert kinds == {"MFT", "INV", "DIR"}
    for check in suite.checks:
        assert 10 <= len(check.texts) + len(check.pairs) <= 20, check.name
    capabilities = {check.capability for check in suite.checks}
    assert {"vocabulary", "fairness", "robustness", "negation"} <= capabilities


def test_checks_score_a_keyword_model() -> None:
    suite = load_behaviour_suite(SST2_SUITE)
    results = {r.name: r for r in run_behaviour_suite(suite, keyword_model, suite.labels)}
    # "wonderful"/"brilliant"/"delight"... only some clear positives use the keyword list
    assert results["mft_clear_negative"].pass_rate == 1.0
    assert results["inv_names"].pass_rate == 1.0
    # Typos break the keyword lookup ("wonderfull"): exactly the positive pairs fail.
    typo_failures = results["inv_typos"].failures
    assert {failure["before"] for failure in typo_failures} == {"positive"}
    negation = results["dir_negation_of_positive"]
    # Only the three pairs whose original holds a keyword (good, great, liked) move down.
    assert (negation.passed, negation.cases) == (3, 12)
    assert negation.failures[0]["original"] == "the story is interesting"
    assert results["dir_negation_of_negative"].pass_rate == 0.0
    metrics = behaviour_metrics(list(results.values()))
    assert metrics["behaviour.inv_names.pass_rate"] == 1.0
    assert 0 < metrics["behaviour.mean_pass_rate"] < 1


def test_suite_for_other_labels_is_refused() -> None:
    suite = load_behaviour_suite(SST2_SUITE)
    with pytest.raises(ConfigError, match=r"suite is for labels \['negative', 'positive'\]"):
        run_behaviour_suite(suite, keyword_model, ["neg", "pos"])


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("labels: [a, b]\nchecks:\n  - {name: x, type: MFT, texts: [t]}", "needs texts and"),
        ("labels: [a, b]\nchecks:\n  - {name: x, type: DIR, pairs: [[u, v]]}", "target_label"),
        (
            "labels: [a, b]\nchecks:\n  - {name: x, type: MFT, texts: [t], expect_label: c}",
            "unknown label 'c'",
        ),
        (
            "labels: [a, b]\nchecks:\n"
            "  - {name: x, type: INV, pairs: [[u, v]]}\n  - {name: x, type: INV, pairs: [[u, v]]}",
            "check names repeat",
        ),
        ("labels: [a, b\n", "not valid YAML"),
    ],
)
def test_malformed_suites_name_the_problem(tmp_path: Path, body: str, message: str) -> None:
    path = tmp_path / "suite.yaml"
    path.write_text(body)
    with pytest.raises(ConfigError, match=message):
        load_behaviour_suite(path)


def test_missing_suite_file_names_the_setting(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="eval.behaviour_checks"):
        load_behaviour_suite(tmp_path / "absent.yaml")


def constant_positive(texts: list[str]) -> np.ndarray:
    return np.tile([0.2, 0.8], (len(texts), 1))


def test_the_gated_checks_fail_a_constant_model() -> None:
    from components.gate import behaviour_shortfalls

    suite = load_behaviour_suite(SST2_SUITE)
    gated = {check.type for check in suite.checks if check.min_pass_rate is not None}
    assert {"MFT", "DIR"} <= gated
    results = run_behaviour_suite(suite, constant_positive, suite.labels)
    assert behaviour_shortfalls(results, None) == [
        "behaviour check mft_clear_negative passed 0.0% (0/15) < required 80.0%",
        "behaviour check dir_negation_of_positive passed 0.0% (0/12) < required 50.0%",
    ]
    # The invariance checks, the only gated one before, pass a constant model.
    assert {r.name: r.pass_rate for r in results if r.type == "INV"} == {
        "inv_names": 1.0,
        "inv_typos": 1.0,
    }


SUITES = {"configs/behaviour/sentiment-en.yaml": ["negative", "positive"]}


def test_auto_picks_the_shipped_suite_for_the_data_labels() -> None:
    from components.behaviour import choose_behaviour_suite

    choice = choose_behaviour_suite("auto", ["negative", "positive"], SUITES)
    assert choice.path == "configs/behaviour/sentiment-en.yaml"
    other = choose_behaviour_suite("auto", ["negative", "neutral", "positive"], SUITES)
    assert other.path is None
    assert other.notice == (
        "eval.behaviour_checks is auto and no shipped suite is written for labels "
        "['negative', 'neutral', 'positive']: no behavioural checks run (name a suite file "
        "to add some)"
    )
    assert choose_behaviour_suite(None, ["a", "b"], {}).path is None


def test_a_named_suite_for_other_labels_is_refused() -> None:
    from components.behaviour import choose_behaviour_suite

    with pytest.raises(ConfigError, match=r"^eval.behaviour_checks names configs/behaviour/"):
        choose_behaviour_suite("configs/behaviour/sentiment-en.yaml", ["neg", "pos"], SUITES)


def test_suite_for_labels_reads_the_project(tmp_path: Path) -> None:
    from components.behaviour import suite_for_labels

    suite, notice = suite_for_labels("auto", ["negative", "positive"], PROJECT_ROOT)
    assert suite is not None and suite.task == "sst2"
    assert notice.startswith("eval.behaviour_checks auto: configs/behaviour/sentiment-en.yaml")
    named = tmp_path / "three.yaml"
    named.write_text(
        "labels: [a, b, c]\nchecks:\n  - {name: x, type: MFT, texts: [t], expect_label: a}"
    )
    with pytest.raises(ConfigError, match=r"a suite for labels \['a', 'b', 'c'\], but the data"):
        suite_for_labels(str(named), ["negative", "positive"], PROJECT_ROOT)


# The polar words of the suite's clear-sentiment checks, in short templates (never the
# suite's own sentences): enough for a tiny model to learn what the gated checks ask.
PRAISE = (  # noqa: SIM905 (a word list reads better as text)
    "delight wonderful brilliant delightful superb loved beautiful moving best funny "
    "smart charming great gripping excellent thoughtful clever perfect warm touching "
    "entertaining masterpiece joy good interesting liked enjoyed satisfying memorable"
).split()
CRITICISM = (  # noqa: SIM905 (a word list reads better as text)
    "terrible awful boring mess dreadful hated dull lifeless worst stupid tedious "
    "charmless weak pointless painful clumsy lazy sluggish cold tiresome unwatchable "
    "disaster chore bad"
).split()
# People's names too (none of the suite's), so a name alone does not sway the model.
TEMPLATE_SUBJECTS = ["the film", "this movie", "the story", "the acting", "the script", "it"]
TEMPLATE_SUBJECTS += ["sam", "olivia", "noah", "priya", "kenji", "lucas", "elena", "omar"]
NOUNS = ["film", "movie", "story", "drama", "plot", "cast"]
FILLERS = ["", "", "from start to finish", "to watch", "of the year", "all the way", "here"]


def suite_vocabulary_rows(count: int, seed: int = 3) -> pd.DataFrame:
    """Praise (positive), criticism (negative) and negated praise (negative), 1:1 classes."""
    rng = random.Random(seed)
    rows = []
    for index in range(count):
        kind = index % 4  # 0, 2: praise; 1: criticism; 3: negated praise
        words = CRITICISM if kind == 1 else PRAISE
        word = rng.choice(words)
        form = rng.randrange(3)
        if kind == 3:
            negation = rng.choice(["not", "never", "hardly"])
            text = f"{rng.choice(TEMPLATE_SUBJECTS)} is {negation} {word}"
        elif form == 0:
            text = f"{rng.choice(TEMPLATE_SUBJECTS)} is {word}"
        elif form == 1:
            text = f"a {word} {rng.choice(NOUNS)}"
        else:
            text = f"{word} , {rng.choice(words)} and {rng.choice(words)}"
        rows.append({"text": f"{text} {rng.choice(FILLERS)}".strip(), "label": int(kind in (0, 2))})
    return pd.DataFrame(rows)


@pytest.mark.slow
def test_a_trained_model_passes_the_gated_checks_a_constant_one_fails(
    tiny_bert_dir: Path, tmp_path: Path
) -> None:
    from components.evaluate import score_texts
    from components.gate import behaviour_shortfalls

    suite = load_behaviour_suite(SST2_SUITE)
    model_dir = train_tiny_classifier(
        tiny_bert_dir,
        tmp_path / "suite-vocabulary",
        steps=120,
        train=suite_vocabulary_rows(400),
        train_word_embeddings=True,
    )
    trained = run_behaviour_suite(suite, lambda texts: score_texts(model_dir, texts), suite.labels)
    gated = [result for result in trained if result.min_pass_rate is not None]
    assert [result.name for result in gated] == [
        "mft_clear_positive",
        "mft_clear_negative",
        "inv_names",
        "dir_negation_of_positive",
    ]
    assert behaviour_shortfalls(trained, None) == [], [(r.name, r.pass_rate) for r in gated]

    def constant_negative(texts: list[str]) -> np.ndarray:
        return np.tile([0.8, 0.2], (len(texts), 1))

    constant = run_behaviour_suite(suite, constant_negative, suite.labels)
    assert behaviour_shortfalls(constant, None) == [
        "behaviour check mft_clear_positive passed 0.0% (0/15) < required 80.0%",
        "behaviour check dir_negation_of_positive passed 0.0% (0/12) < required 50.0%",
    ]
