"""The retrain flow on a further model (pipelines/<name>/params.yaml): it reads the data
path from the model's folder, stages the snapshot there, and keeps its run report in the
model's part of the shared state folder; the default model's data is not touched.

(A full tiny retrain of a model folder registers ``ratchet-<name>`` and builds its Bento
the same way; that costs a training run, so CI checks the routing up to validation.)
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from components.errors import DataValidationError
from tests.conftest import add_model_folder
from tests.flows.conftest import flow_overrides, make_project, write_tsv

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture(scope="module", autouse=True)
def prefect_harness() -> Iterator[None]:
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


def test_a_model_folder_retrains_from_its_own_folder(
    sentiment_source: Path, state_dir: Path, tiny_bert_dir: Path, tmp_path: Path
) -> None:
    from flows.retrain import retrain

    project = make_project(tmp_path / "project", sentiment_source)
    bad = tmp_path / "bad"
    write_tsv(bad / "train.tsv", [(f"a fine film {i}", i % 2) for i in range(40)] + [("dull", 7)])
    write_tsv(bad / "dev.tsv", [("lovely", 1), ("awful", 0)])
    folder = add_model_folder(
        project,
        "reviews",
        project / "params.yaml",
        data__source="../../../bad",  # relative to the model's folder
        registry__model_name="ratchet-reviews",
    )

    with pytest.raises(DataValidationError, match="label") as failure:
        retrain(params=str(folder / "params.yaml"), overrides=flow_overrides(tiny_bert_dir))

    rejected = folder / "data" / "incoming" / "train.tsv"
    assert rejected.read_bytes() == (bad / "train.tsv").read_bytes()
    assert f"{rejected} line 42" in str(failure.value)
    assert not (project / "data").exists() and not (project / "dvc.lock").exists()
    report = next((state_dir / "pipelines" / "reviews" / "reports").glob("*.md")).read_text()
    assert "failed" in report and "label" in report
    assert not (state_dir / "reports").exists()
    assert (state_dir / "pipelines" / "reviews" / "data-docs" / "index.html").is_file()
    assert sorted(path.name for path in state_dir.glob("*.db")) == ["mlflow.db"]  # shared
