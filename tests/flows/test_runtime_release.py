"""An exported serving runtime before promotion: parity on the whole test split, then a
checked Bento, or no Bento and no alias move.

Reuses the registry tests' fixtures (tiny models, their evaluations, an isolated store);
one Bento is built (the ONNX one), the failing case stops before any build.
"""
# ruff: noqa: F811  (the imported fixtures are parameters of the tests)

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from mlflow import MlflowClient

from components import registry
from components.config import RatchetConfig
from components.errors import ParityError
from components.promotion import apply_gate
from components.state import ProjectPaths
from tests.conftest import PROJECT_ROOT
from tests.flows.test_aliases import register_only, without_floor
from tests.flows.test_registry import (  # noqa: F401  (fixtures)
    config,
    current_aliases,
    empty_store,
    publish,
    reports,
)

pytestmark = pytest.mark.slow


def with_runtime(config: RatchetConfig, runtime: str) -> RatchetConfig:
    serving = config.serving.model_copy(update={"runtime": runtime})
    return without_floor(config).model_copy(update={"serving": serving})


def test_an_onnx_bento_is_built_after_parity_and_answers_as_evaluated(
    config: RatchetConfig, tiny_classifiers: dict[str, Path], reports: Callable
) -> None:
    import bentoml

    from flows.tasks import release_for
    from serving.build import bentoml_home, bentos_of_version, use_bentoml_home
    from serving.release import check_environment, run_built_bento

    config = with_runtime(config, "onnx")
    name = config.registry.model_name
    paths = ProjectPaths.discover(PROJECT_ROOT)
    report = reports("good")
    version = register_only(config, tiny_classifiers["good"], report)
    decision = apply_gate(name, version, report, config.gate, release=release_for(config, paths))

    assert decision.promote and current_aliases(config)["champion"] == version
    client = MlflowClient()
    tags = registry.version_tags(client, name, version)
    assert (tags["parity.runtime"], tags["parity.passed"]) == ("onnx", "true")
    assert float(tags["parity.agreement"]) == 1.0
    assert float(tags["parity.max_prob_diff"]) <= 1e-4
    assert tags["parity.examples"] == str(len(report.texts))
    assert tags["inference.runtime"] == "torch"  # evaluation's runtime, which the gate uses
    card = client.get_model_version(name, version).description
    assert "## Serving runtime parity" in card and "| runtime | onnx |" in card
    run_id = client.get_model_version(name, version).run_id
    assert [item.path for item in client.list_artifacts(run_id, "onnx")] == ["onnx/model.onnx"]

    home = bentoml_home(paths)
    with use_bentoml_home(home):
        (bento,) = bentos_of_version(name, version)
        assert bento.info.args["runtime"] == "onnx"
        assert bento.info.labels["parity.runtime"] == "onnx"
        assert bento.info.labels["parity.agreement"] == "1"
        stored = bentoml.models.get(bento.info.args["model_tag"])
        assert str(stored.tag) == f"{name}:v{version}-onnx"
        assert Path(stored.path_of("hf_model/onnx/model.onnx")).is_file()
    # The built Bento, loaded in a fresh process, answers as evaluation scored in torch.
    texts = report.texts[:12]
    answer = run_built_bento(
        str(bento.tag), texts, check_environment(config, str(home), PROJECT_ROOT)
    )
    served = np.array([[row[label] for label in report.labels] for row in answer["probabilities"]])
    np.testing.assert_allclose(served, report.probabilities[:12], atol=1e-4, rtol=0)


def test_a_parity_failure_blocks_the_build_and_the_alias_stays(
    config: RatchetConfig,
    tiny_classifiers: dict[str, Path],
    reports: Callable,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import bentoml

    from flows.tasks import release_for
    from serving import parity
    from serving.build import bentoml_home, bentos_of_version, use_bentoml_home

    config = with_runtime(config, "onnx")
    name = config.registry.model_name
    paths = ProjectPaths.discover(PROJECT_ROOT)
    champion, _ = publish(config, tiny_classifiers["shuffled"], reports("shuffled"))
    challenger = register_only(config, tiny_classifiers["good"], reports("good"))
    # No float graph matches torch to better than -1: every probability "differs".
    monkeypatch.setattr(parity, "MAX_PROB_DIFF", {"onnx": -1.0})

    with pytest.raises(ParityError) as refused:
        apply_gate(
            name, challenger, reports("good"), config.gate, release=release_for(config, paths)
        )

    message = str(refused.value)
    assert message.startswith(
        f"the onnx runtime does not score the {len(reports('good').texts)} test texts like "
        "the evaluated torch model: a class probability differs from torch's by "
    )
    assert "(at most -1) (agreement 100.00%, accuracy delta +0.00 points)" in message
    assert current_aliases(config) == {"champion": champion, "challenger": challenger}
    tags = registry.version_tags(MlflowClient(), name, challenger)
    assert (tags["parity.runtime"], tags["parity.passed"]) == ("onnx", "false")
    assert tags["gate.reason"].startswith(
        "blocked before the alias move: the Bento failed: the onnx runtime does not score"
    )
    with use_bentoml_home(bentoml_home(paths)):
        assert bentos_of_version(name, challenger) == []
        assert not [m for m in bentoml.models.list() if f"v{challenger}-onnx" in str(m.tag)]
