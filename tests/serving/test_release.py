"""The pre-promotion check of a built Bento: loaded in a fresh process from the BentoML store,
its API called on test texts, its answers compared with the evaluated ones.

Uses the session's built Bento (tests/serving/conftest.py); two loads of it, no server.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from components.errors import ServingError
from serving.release import (
    BF16_TOLERANCE,
    FP32_TOLERANCE,
    INT8_TOLERANCE,
    CheckSample,
    check_bento,
    check_sample,
    probability_tolerance,
    run_built_bento,
)
from tests.serving.conftest import BuiltBento

pytestmark = pytest.mark.slow

TEXTS = ["the movie was great number 3", "the plot was dull number 8", "a " * 400 + "fun"]


def test_the_check_loads_the_built_bento_and_refuses_other_answers(
    built_bento: BuiltBento,
) -> None:
    env = dict(built_bento.env)
    answer = run_built_bento(built_bento.tag, TEXTS, env)
    # The service module came from the Bento's own copy of the code, not the checkout.
    bento_dir = Path(env["BENTOML_HOME"]) / "bentos" / built_bento.tag.replace(":", "/")
    assert Path(answer["service_file"]).is_relative_to(bento_dir)
    assert answer["version"] == built_bento.registry_version
    names = ["negative", "positive"]
    evaluated = np.array([[row[name] for name in names] for row in answer["probabilities"]])
    sample = CheckSample(TEXTS, answer["labels"], evaluated, names)
    check_bento(built_bento.tag, sample, built_bento.registry_version, "fp32", env)

    off = evaluated.copy()
    off[1] += [3 * FP32_TOLERANCE, -3 * FP32_TOLERANCE]  # a slightly different model
    with pytest.raises(ServingError) as refused:
        check_bento(
            built_bento.tag,
            CheckSample(TEXTS, answer["labels"], off, names),
            built_bento.registry_version,
            "fp32",
            env,
        )
    message = str(refused.value)
    assert f"does not answer as v{built_bento.registry_version} was evaluated on 1 of 3" in message
    assert "text 1 ('the plot was dull number 8')" in message
    assert "probabilities within 0.0001" in message


def test_the_check_sample_and_tolerances() -> None:
    frame = pd.DataFrame(
        {
            "text": [f"text {i}" for i in range(50)] + ["a much longer text " * 20],
            "label": [i % 2 for i in range(51)],
            "predicted": [1] * 51,
            "prob_negative": [0.25] * 51,
            "prob_positive": [0.75] * 51,
        }
    )
    sample = check_sample(frame, size=8)
    assert len(sample.texts) == 8 and sample.texts[-1].startswith("a much longer text")
    assert sample.labels == ["positive"] * 8 and sample.class_names == ["negative", "positive"]
    assert check_sample(frame, size=8).texts == sample.texts  # the same sample every time
    assert (probability_tolerance("fp32"), probability_tolerance("bf16")) == (
        FP32_TOLERANCE,
        BF16_TOLERANCE,
    )
    assert probability_tolerance("fp32", "onnx") == FP32_TOLERANCE
    assert probability_tolerance("fp32", "onnx-int8") == INT8_TOLERANCE == 1e-3


def test_the_tagger_release_builds_and_checks_its_bento_against_in_process_tags(
    built_tagger: BuiltBento,
) -> None:
    """What runs before an alias moves to a tagger: not reusable with other serving settings,
    so release_version builds a Bento and checks its `entities` on the probe texts."""
    from mlflow import MlflowClient

    from components.config import load_config
    from components.state import ProjectPaths
    from serving.build import use_bentoml_home
    from serving.release import TAGGER_PROBES, release_version, tagger_probe_texts
    from tests.conftest import PROJECT_ROOT
    from tests.serving.conftest import TAGGER_NAME

    env = built_tagger.env
    patch = pytest.MonkeyPatch()
    for name in ("MLFLOW_TRACKING_URI", "BENTOML_HOME", "RATCHET_HOME"):
        patch.setenv(name, env[name])
    try:
        probe = tagger_probe_texts(MlflowClient(), TAGGER_NAME, built_tagger.registry_version)
        config = load_config(
            PROJECT_ROOT / "params.yaml",
            overrides=[f"registry.model_name={TAGGER_NAME}", "serving.max_texts=48"],
        )
        paths = ProjectPaths(project_root=PROJECT_ROOT, state_dir=Path(env["RATCHET_HOME"]))
        tag = release_version(config, paths, built_tagger.registry_version)
        with use_bentoml_home(Path(env["BENTOML_HOME"])):
            import bentoml

            arguments = bentoml.bentos.get(tag).info.args
    finally:
        patch.undo()
    # The probes, then the 20 test sentences its evaluation logged (predictions.jsonl).
    assert probe[: len(TAGGER_PROBES)] == TAGGER_PROBES and len(probe) == len(TAGGER_PROBES) + 20
    assert tag != built_tagger.tag
    assert (arguments["max_texts"], arguments["runtime"]) == (48, "torch")


def test_the_tagger_check_refuses_other_entities_and_another_version(
    built_tagger: BuiltBento,
) -> None:
    from serving.build import use_bentoml_home
    from serving.release import TAGGER_PROBES, check_tagger_bento, compare_entities

    texts = TAGGER_PROBES[:2]
    served = [
        {"entities": [{"label": "PER", "text": "Angela", "start": 0, "end": 6, "score": 0.9}],
         "windows": 1},
        {"entities": [], "windows": 1},
    ]  # fmt: skip
    assert compare_entities(texts, served, served, 1e-4) == []
    shifted = [{**served[0], "entities": [{**served[0]["entities"][0], "end": 7}]}, served[1]]
    scored = [{**served[0], "entities": [{**served[0]["entities"][0], "score": 0.8}]}, served[1]]
    assert compare_entities(texts, served, shifted, 1e-4) == [
        "text 0 ('Angela Merkel met Emmanuel Macron in Par'): served "
        "[('PER', 0, 7, 'Angela')], in-process [('PER', 0, 6, 'Angela')] (max score gap 0)"
    ]
    assert "(max score gap 0.1)" in compare_entities(texts, served, scored, 1e-4)[0]
    refusal = f"serves v{built_tagger.registry_version}, not v99"
    with (
        use_bentoml_home(Path(built_tagger.env["BENTOML_HOME"])),
        pytest.raises(ServingError, match=refusal),
    ):
        check_tagger_bento(built_tagger.tag, texts, "99", "fp32", built_tagger.env)
