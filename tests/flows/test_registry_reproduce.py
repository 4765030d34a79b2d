"""`ratchet reproduce`: rebuild a registered version from its lineage; CPU deterministic match."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import mlflow
import pytest

from components import registry, tracking
from components.base_model import model_fingerprint
from components.config import RatchetConfig
from components.errors import RegistryError
from components.evaluate import evaluate_model
from components.finetune import run_finetuning
from components.mlflow_model import log_classifier_model
from components.prepare import PreparedData, load_prepared, write_prepared
from components.promotion import apply_gate
from components.reproduce import materialize_dvc_dir, reproduce_version
from components.state import ProjectPaths
from components.versioning import directory_md5
from tests.conftest import prepared_split


def test_missing_data_names_the_stores(tmp_path: Path) -> None:
    with pytest.raises(RegistryError, match=r"data ab12\.dir is in no DVC cache or remote"):
        materialize_dvc_dir("ab12.dir", [tmp_path / "cache"], tmp_path / "out")


@pytest.mark.slow
def test_reproduce_matches_exactly_on_cpu(
    tiny_config: RatchetConfig, tiny_bert_dir: Path, state_dir: Path, tmp_path: Path
) -> None:
    project = tmp_path / "project"
    paths = ProjectPaths(project_root=project, state_dir=state_dir)
    labels = ["negative", "positive"]
    prepared = PreparedData(
        train=prepared_split(96, seed=1),
        validation=prepared_split(32, seed=2),
        test=prepared_split(40, seed=3),
        labels=labels,
    )
    write_prepared(prepared, paths.prepared_dir)
    # Real DVC puts the prepared folder into the project's cache, addressed by md5.
    subprocess.run(["git", "init", "-q"], cwd=project, check=True)
    dvc = str(Path(sys.executable).parent / "dvc")
    for args in (["init", "-q"], ["add", "-q", "data/prepared"]):
        subprocess.run([dvc, *args], cwd=project, check=True, capture_output=True)
    prepared_md5 = directory_md5(paths.prepared_dir)

    config = tiny_config.model_copy(
        update={
            "pretrain": tiny_config.pretrain.model_copy(update={"enabled": False}),
            "train": tiny_config.train.model_copy(
                update={"deterministic": True, "max_steps": 6, "precision": "fp32"}
            ),
            "eval": tiny_config.eval.model_copy(
                update={"behaviour_checks": None, "latency_samples": 2}
            ),
        }
    )
    model_dir = run_finetuning(
        config, load_prepared(paths.prepared_dir), str(tiny_bert_dir), tmp_path / "finetuned"
    ).model_dir
    report = evaluate_model(
        model_dir, prepared.test, labels, config.eval, tmp_path / "eval", None, 32
    )
    tracking.setup_tracking(config, paths)
    lineage = {
        "prepared_data_md5": prepared_md5,
        "base_model_id": str(tiny_bert_dir),
        "base_model_hash": model_fingerprint(str(tiny_bert_dir)),
    }
    name = config.registry.model_name
    with tracking.parent_run(config), tracking.stage_run("evaluate") as run:
        uri = log_classifier_model(model_dir).model_uri
        version = registry.register_challenger(name, uri, report, lineage, config, run.info.run_id)
    apply_gate(name, str(version.version), report, config.gate)
    mlflow.end_run()

    result = reproduce_version(name, str(version.version), paths)
    assert result.predictions_differing == 0
    assert result.differences["accuracy"]["registered"] == report.accuracy
    assert {row["delta"] for row in result.differences.values()} == {0.0}
    assert "latency_p50_ms_batch1" not in result.differences
    assert result.matches
