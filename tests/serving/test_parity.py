"""Exported runtimes on a tiny model: export, score, parity rules, the model-card section.

No Bento here (tests/flows/test_runtime_release.py builds one): the parity a build runs,
called directly on a copy of the shared tiny classifier.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from components.errors import ParityError, ServingError
from components.evaluate import predictions_frame
from components.export import export_runtime
from components.inference import container_cores, load_classifier, onnx_path, predict_proba
from serving.parity import (
    CARD_HEADING,
    ParityReport,
    card_section,
    measure_parity,
    parity_error,
    parity_failures,
    score_parity,
    with_parity,
)
from serving.predict import predict_texts
from tests.conftest import prepared_split

LABELS = ["negative", "positive"]


@pytest.fixture(scope="module")
def evaluated(tiny_classifiers: dict[str, Path]) -> pd.DataFrame:
    """The tiny model's torch predictions on a test split, as evaluation records them."""
    test = prepared_split(60, seed=3)
    test.loc[0, "text"] = "a " * 300 + "long review"  # cut by the token window
    probabilities, _ = predict_proba(load_classifier(tiny_classifiers["good"]), test["text"])
    return predictions_frame(test["text"], test["label"].to_numpy(), probabilities, LABELS)


@pytest.fixture
def model_copy(tiny_classifiers: dict[str, Path], tmp_path: Path) -> Path:
    return Path(shutil.copytree(tiny_classifiers["good"], tmp_path / "model"))


def test_onnx_fp32_scores_like_torch(model_copy: Path, evaluated: pd.DataFrame) -> None:
    report, predictions = score_parity(model_copy, "onnx", evaluated, None, 16)

    assert onnx_path(model_copy, "onnx").is_file()
    assert report.runtime == "onnx" and report.examples == 60
    assert report.agreement == 1.0 and report.accuracy_delta == 0.0
    assert report.max_prob_diff < 1e-5
    assert report.per_channel is None
    assert parity_failures(report) == []
    np.testing.assert_allclose(
        predictions[["prob_negative", "prob_positive"]].to_numpy(),
        evaluated[["prob_negative", "prob_positive"]].to_numpy(),
        atol=1e-5,
    )
    # bf16 is a torch autocast: the exported graph runs fp32 whatever serving.precision says.
    assert load_classifier(model_copy, "bf16", runtime="onnx").precision == "fp32"
    # The served path runs the same graph with the same tokenisation and truncation flags.
    onnx = load_classifier(model_copy, runtime="onnx")
    texts = evaluated["text"].tolist()[:5]
    served = predict_texts(onnx, texts, chunk_size=2)
    assert [row["truncated"] for row in served] == [True, False, False, False, False]
    torch_rows = predict_texts(load_classifier(model_copy), texts)
    for onnx_row, torch_row in zip(served, torch_rows, strict=True):
        assert onnx_row["label"] == torch_row["label"]
        assert onnx_row["score"] == pytest.approx(torch_row["score"], abs=1e-5)


def test_onnx_int8_holds_accuracy_and_keeps_only_its_graph(
    model_copy: Path, evaluated: pd.DataFrame
) -> None:
    report, _ = score_parity(model_copy, "onnx-int8", evaluated, None, 16)

    assert onnx_path(model_copy, "onnx-int8").is_file()
    assert not onnx_path(model_copy, "onnx").exists()
    assert isinstance(report.per_channel, bool)
    assert abs(report.accuracy_delta) <= 0.01 and report.agreement >= 0.95
    assert parity_failures(report) == []
    tags = report.tags()
    assert tags["parity.runtime"] == "onnx-int8"
    assert tags["parity.per_channel"] == str(report.per_channel)
    assert float(tags["parity.agreement"]) == pytest.approx(report.agreement, abs=1e-6)

    # Served as parity proved it: a text scores the same alone or among any batch-mates
    # (dynamic int8 takes one activation scale per input tensor).
    int8 = load_classifier(model_copy, runtime="onnx-int8")
    texts = evaluated["text"].tolist()[:24]
    alone = np.vstack([predict_proba(int8, [text])[0] for text in texts])
    together = predict_proba(int8, texts, 24)[0]
    assert np.abs(alone - together).max() <= 1e-6

    # The passes run side by side, one intra-op thread each, as many as `threads` says
    # (the Bento passes serving.num_threads); the answers are those of one pass at a time.
    side_by_side = load_classifier(model_copy, runtime="onnx-int8", threads=3)
    one_by_one = load_classifier(model_copy, runtime="onnx-int8", threads=1)
    assert side_by_side.passes is not None and side_by_side.passes._max_workers == 3
    assert one_by_one.passes is None
    for classifier in (side_by_side, one_by_one, int8):
        assert classifier.model.get_session_options().intra_op_num_threads == 1
    default_passes = int8.passes._max_workers if int8.passes else 1
    assert default_passes == container_cores()
    parallel, parallel_cut = predict_proba(side_by_side, texts)
    serial, serial_cut = predict_proba(one_by_one, texts)
    np.testing.assert_array_equal(parallel, serial)
    np.testing.assert_array_equal(parallel, alone)
    assert parallel_cut.tolist() == serial_cut.tolist() == [True] + [False] * 23


def test_parity_rules_name_what_broke() -> None:
    evaluated = pd.DataFrame(
        {
            "text": ["a", "b", "c", "d"],
            "label": [0, 1, 1, 0],
            "predicted": [0, 1, 1, 1],
            "prob_negative": [0.9, 0.2, 0.4, 0.45],
            "prob_positive": [0.1, 0.8, 0.6, 0.55],
        }
    )
    # The runtime flips the third text (0.6 -> 0.49) and moves the fourth a little.
    runtime = np.array([[0.9, 0.1], [0.2, 0.8], [0.51, 0.49], [0.46, 0.54]])
    report = measure_parity(evaluated, runtime, "onnx")
    assert (report.agreement, report.torch_accuracy, report.runtime_accuracy) == (0.75, 0.75, 0.5)
    assert report.max_prob_diff == pytest.approx(0.11)
    assert parity_failures(report) == [
        "label agreement 75.00% is below 99.5%",
        "accuracy 0.5000 against torch's 0.7500 is 25.00 points off (at most 0.5)",
        "a class probability differs from torch's by 0.11 (at most 0.0001)",
    ]
    # int8: only the accuracy rule; agreement and the gap are reported, not enforced.
    int8 = measure_parity(evaluated, runtime, "onnx-int8")
    assert parity_failures(int8) == [
        "accuracy 0.5000 against torch's 0.7500 is 25.00 points off (at most 1)"
    ]
    close = measure_parity(
        evaluated, evaluated[["prob_negative", "prob_positive"]].to_numpy(), "onnx"
    )
    assert parity_failures(close) == []
    error = parity_error(int8, parity_failures(int8))
    assert isinstance(error, ServingError) and isinstance(error, ParityError)
    assert str(error).startswith(
        "the onnx-int8 runtime does not score the 4 test texts like the evaluated torch model: "
        "accuracy 0.5000 against torch's 0.7500 is 25.00 points off (at most 1) "
        "(agreement 75.00%, accuracy delta -25.00 points). No Bento is built"
    )


def test_the_card_section_is_replaced_not_repeated() -> None:
    report = ParityReport("onnx-int8", 872, 0.986, 0.8704, 0.8704, 0.0, 0.2, True)
    card = "# Model card\n\n## Metrics\n\n| a | b |\n"
    once = with_parity(card, card_section(report, passed=True))
    assert once.startswith(card.rstrip()) and once.count(CARD_HEADING) == 1
    assert "| label agreement with torch | 98.60% |" in once
    assert "| int8 weights | per channel |" in once
    again = with_parity(once + "\n## Promotion decision\n\nx\n", card_section(report, False))
    assert again.count(CARD_HEADING) == 1 and "| result | FAILED |" in again
    assert again.rstrip().endswith("## Promotion decision\n\nx")


def test_an_unexported_runtime_is_a_clear_error(tiny_classifiers: dict[str, Path]) -> None:
    with pytest.raises(ServingError, match=r"onnx/model-int8.onnx does not exist: export"):
        load_classifier(tiny_classifiers["good"], runtime="onnx-int8")
    with pytest.raises(ServingError, match=r"unknown inference runtime 'tensorrt'"):
        load_classifier(tiny_classifiers["good"], runtime="tensorrt")
    assert export_runtime(tiny_classifiers["good"], "torch") == {"files": []}
    with pytest.raises(ServingError, match=r"unknown inference runtime 'tensorrt'"):
        export_runtime(tiny_classifiers["good"], "tensorrt")
