"""data.task: the default changes nothing; settings that do not fit the task fail on load."""

from __future__ import annotations

from pathlib import Path

import pytest

from components.behaviour import suite_for_labels
from components.config import load_config
from components.errors import ConfigError
from tests.conftest import PROJECT_ROOT

PARAMS = PROJECT_ROOT / "params.yaml"
CONLL = PROJECT_ROOT / "configs" / "conll.yaml"
TAGS = ["O", "B-LOC", "I-LOC", "B-MISC", "I-MISC", "B-ORG", "I-ORG", "B-PER", "I-PER"]


def test_default_task_is_text_classification_and_the_params_load() -> None:
    config = load_config(PARAMS)
    assert config.data.task == "text-classification"
    assert config.gate.metric == "f1_macro"


def test_conll_profile_loads() -> None:
    config = load_config(PARAMS, [CONLL])
    assert (config.data.task, config.data.labels, config.gate.metric) == (
        "token-classification",
        None,
        "entity_f1",
    )


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            ["data.task=token-classification", "data.labels=null"],
            "gate.metric 'f1_macro' is not a metric of data.task 'token-classification': "
            "use one of ['entity_f1']",
        ),
        (
            ["data.task=token-classification", "gate.metric=entity_f1"],
            "data.labels ['negative', 'positive'] is not an IOB2 tag set (not tags: "
            "['negative', 'positive']; 'O' needed)",
        ),
        (
            [
                "data.task=token-classification",
                "gate.metric=entity_f1",
                "data.labels=[B-PER, I-PER]",
            ],
            "data.labels ['B-PER', 'I-PER'] is not an IOB2 tag set (not tags: none; 'O' needed)",
        ),
        (
            ["gate.metric=entity_f1"],
            "gate.metric 'entity_f1' is not a metric of data.task 'text-classification'",
        ),
        (
            ["data.source=../shared/data/conll2003/train.txt"],
            "data.source ../shared/data/conll2003/train.txt is a .txt file, which Ratchet reads "
            "as CoNLL token/tag data: set data.task: token-classification",
        ),
        (
            ["data.source=rows.csv"],
            "data.source rows.csv is a .csv table, but data.task 'token-classification' reads "
            "CoNLL files",
        ),
        (["model.pooling=mean"], "model.pooling applies to data.task 'text-classification' only"),
    ],
)
def test_settings_that_do_not_fit_the_task_fail_on_load(overrides: list[str], message: str) -> None:
    profile = [CONLL] if overrides[0] in ("data.source=rows.csv", "model.pooling=mean") else []
    with pytest.raises(ConfigError) as raised:
        load_config(PARAMS, profile, overrides)
    assert message in str(raised.value)
    assert str(raised.value).startswith("settings do not fit data.task")


def test_default_behaviour_suite_is_skipped_for_tags_with_a_notice() -> None:
    suite, notice = suite_for_labels("auto", TAGS, PROJECT_ROOT)
    assert suite is None
    assert notice.startswith("eval.behaviour_checks is auto and no shipped suite is written")


def test_a_named_sentiment_suite_fails_for_tags(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="a suite for labels \\['negative', 'positive'\\]"):
        suite_for_labels("configs/behaviour/sentiment-en.yaml", TAGS, PROJECT_ROOT)
