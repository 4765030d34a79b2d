"""Truncation is measured: the share of texts the token window cuts, the stop above
``data.checks.max_truncated_fraction``, and the ``truncated`` evaluation slice."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from components.base_model import shipped_model_dir
from components.config import EvalConfig, load_config
from components.errors import DataError
from components.prepare import PreparedData, write_prepared
from components.state import ProjectPaths
from components.truncation import (
    check_truncation,
    measure_truncation,
    token_counts,
    truncated_fraction,
)
from tests.conftest import PROJECT_ROOT, prepared_split

SHORT = "a fine film"  # [CLS] a fine film [SEP]: 5 tokens
LONG = "the plot was dull and the acting was worse than the plot"  # 14 tokens


@pytest.fixture(scope="module")
def tokenizer() -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(shipped_model_dir()))


def test_truncated_fraction_counts_texts_longer_than_the_window(tokenizer: Any) -> None:
    assert token_counts([SHORT, LONG], tokenizer).tolist() == [5, 14]
    assert truncated_fraction([SHORT, LONG, LONG, SHORT], tokenizer, 13) == 0.5
    assert truncated_fraction([SHORT, LONG], tokenizer, 14) == 0.0  # exactly fits
    assert truncated_fraction([], tokenizer, 8) == 0.0
    assert measure_truncation([SHORT, LONG], [SHORT] * 3 + [LONG], tokenizer, 8) == {
        "data.truncated_fraction_train": 0.5,
        "data.truncated_fraction_test": 0.25,
    }


def test_too_much_truncation_stops_naming_both_settings() -> None:
    fractions = {"data.truncated_fraction_train": 0.02, "data.truncated_fraction_test": 0.25}
    check_truncation(fractions, 128, 0.25)  # at the limit: allowed
    with pytest.raises(DataError) as stopped:
        check_truncation(fractions, 128, 0.05)
    assert str(stopped.value).startswith(
        "25.0% of the test texts are longer than model.max_length=128 tokens and would be "
        "truncated, more than data.checks.max_truncated_fraction=0.05 allows"
    )


def test_the_flow_records_truncation_and_stops_before_training(
    tmp_path: Path, tiny_bert_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from components import tracking
    from flows import retrain, tasks
    from flows.run_record import RunRecord

    paths = ProjectPaths(project_root=tmp_path, state_dir=tmp_path / "state")
    train = pd.DataFrame({"text": [SHORT, LONG, SHORT, SHORT], "label": [0, 1, 0, 1]})
    test = pd.DataFrame({"text": [SHORT, LONG], "label": [0, 1]})
    frames = {
        name: frame.assign(label_name=frame["label"].map({0: "negative", 1: "positive"}))
        for name, frame in {"train": train, "validation": test, "test": test}.items()
    }
    write_prepared(PreparedData(labels=["negative", "positive"], **frames), paths.prepared_dir)
    logged: list[dict[str, float]] = []
    monkeypatch.setattr(tracking, "log_metrics", lambda run_id, metrics: logged.append(metrics))
    monkeypatch.setattr(tasks, "measure_truncation", tasks.measure_truncation.fn)
    record = RunRecord("id", "name", tmp_path / "record.json")
    expected = {"data.truncated_fraction_train": 0.25, "data.truncated_fraction_test": 0.5}

    def config(max_fraction: float) -> Any:
        return load_config(
            PROJECT_ROOT / "params.yaml",
            overrides=[
                f"model.base={tiny_bert_dir}",
                "model.max_length=8",
                f"data.checks.max_truncated_fraction={max_fraction}",
            ],
        )

    with pytest.raises(DataError, match="50.0% of the test texts .* model.max_length=8 "):
        retrain.measure_truncation_before_training(config(0.05), paths, record, "run")
    assert logged == [expected]  # recorded on the run before it stopped
    assert record.summary["truncation"] == expected
    fractions = retrain.measure_truncation_before_training(config(0.5), paths, record, "run")
    assert fractions == expected  # these become the version's lineage tags


@pytest.mark.slow
def test_evaluation_reports_truncated_and_untruncated_texts(
    tiny_classifiers: dict, tmp_path: Path, tokenizer: Any
) -> None:
    from components.evaluate import evaluate_model

    test = prepared_split(20, seed=5)
    test.loc[:5, "text"] = [f"{text} and then it went on and on and on" for text in test.text[:6]]
    config = EvalConfig(latency_samples=1, top_mistakes=2, batch_size=16)
    max_length = 12
    report = evaluate_model(
        tiny_classifiers["good"], test, ["negative", "positive"], config, tmp_path, None, max_length
    )
    cut = token_counts(test["text"].tolist(), tokenizer) > max_length
    assert cut.sum() == 6
    metrics = report.metrics
    assert metrics["slice.truncated.true.examples"] == 6
    assert metrics["slice.truncated.false.examples"] == 14
    correct = report.predicted_ids == test["label"].to_numpy()
    assert metrics["slice.truncated.true.accuracy"] == pytest.approx(np.mean(correct[cut]))
    assert metrics["slice.truncated.false.accuracy"] == pytest.approx(np.mean(correct[~cut]))
    assert metrics["truncated_fraction"] == pytest.approx(0.3)
