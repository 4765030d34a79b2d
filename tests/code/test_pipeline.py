"""The pipeline declared once (components/pipeline.py): dvc.yaml, cache keys, stage order."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from cli.main import get_app
from components.config import load_config
from components.errors import ConfigError
from components.pipeline import (
    PIPELINE,
    check_dvc_yaml,
    is_enabled,
    param_values,
    params_hash,
    render_dvc_yaml,
)
from tests.conftest import PROJECT_ROOT

runner = CliRunner()


def test_dvc_yaml_is_generated_from_the_declaration() -> None:
    check_dvc_yaml(PROJECT_ROOT / "dvc.yaml")
    assert (PROJECT_ROOT / "dvc.yaml").read_text() == render_dvc_yaml()


def test_generated_dvc_yaml_keeps_what_dvc_reads() -> None:
    stages = yaml.safe_load(render_dvc_yaml())["stages"]
    assert list(stages) == ["ingest", "validate", "prepare", "pretrain", "train", "evaluate"]
    assert stages["ingest"]["deps"] == [
        "${data.source}",
        "components/ingest.py",
        "components/data_files.py",
        "components/token_data.py",
    ]
    assert stages["ingest"]["params"] == ["data.source", "data.task"]
    assert stages["ingest"]["outs"] == [{"data/raw": {"persist": True}}]
    assert stages["prepare"]["outs"] == [{"data/prepared": {"persist": True}}]
    assert stages["validate"]["metrics"] == [{"metrics/data_validation.json": {"cache": False}}]
    assert stages["pretrain"]["outs"] == ["models/pretrained"]
    assert stages["train"]["params"] == ["train", "model"]
    assert stages["train"]["deps"][:2] == ["data/prepared", "models/pretrained"]
    assert stages["evaluate"]["plots"] == [
        {"metrics/confusion_matrix.png": {"cache": False}},
        {"metrics/reliability_diagram.png": {"cache": False}},
    ]
    # The comments that explain a choice survive generation.
    text = render_dvc_yaml()
    assert "      - components/validate.py  # normalise_text keys the split hash\n" in text
    assert "          persist: true  # a failed run must leave the previous splits" in text


def test_every_declared_source_file_exists() -> None:
    missing = [
        dep.path
        for stage in PIPELINE.stages
        for dep in stage.deps
        if dep.is_code and not (PROJECT_ROOT / dep.path).exists()
    ]
    assert missing == []


def test_a_model_folder_pipeline_points_back_at_the_sources(tmp_path: Path) -> None:
    target = tmp_path / "models" / "ner" / "dvc.yaml"
    options = ["--output", str(target), "--code-root", "../.."]
    written = runner.invoke(get_app(), ["pipeline", "dvc-yaml", *options])
    assert written.exit_code == 0, written.output
    stages = yaml.safe_load(target.read_text())["stages"]
    assert stages["prepare"]["deps"][:3] == [
        "data/raw",
        "metrics/data_validation.json",
        "../../components/ingest.py",
    ]
    assert "../../configs/behaviour" in stages["evaluate"]["deps"]


def test_check_names_the_first_differing_line_and_the_command_fixes_it(tmp_path: Path) -> None:
    shutil.copy(PROJECT_ROOT / "params.yaml", tmp_path / "params.yaml")
    dvc_yaml = tmp_path / "dvc.yaml"
    dvc_yaml.write_text(render_dvc_yaml().replace("cmd: ratchet train", "cmd: ratchet train -v"))
    with pytest.raises(ConfigError, match=r"line \d+: has '    cmd: ratchet train -v'"):
        check_dvc_yaml(dvc_yaml)

    params = ["--params", str(tmp_path / "params.yaml")]
    checked = runner.invoke(get_app(), ["pipeline", "dvc-yaml", "--check", *params])
    assert checked.exit_code == 2
    assert "run `ratchet pipeline dvc-yaml`" in " ".join(checked.output.split())
    written = runner.invoke(get_app(), ["pipeline", "dvc-yaml", *params])
    assert written.exit_code == 0, written.output
    assert dvc_yaml.read_text() == render_dvc_yaml()
    again = runner.invoke(get_app(), ["pipeline", "dvc-yaml", "--check", *params])
    assert again.exit_code == 0 and "matches" in again.output


def test_stage_relations_come_from_deps_and_outs() -> None:
    assert PIPELINE.names("data") == ["ingest", "validate", "prepare"]
    assert PIPELINE.cached_data_stages() == ["ingest", "prepare"]
    assert PIPELINE.lineage_outputs() == {
        "raw_data_md5": "data/raw",
        "prepared_data_md5": "data/prepared",
    }
    train, pretrain = PIPELINE.stage("train"), PIPELINE.stage("pretrain")
    assert PIPELINE.upstream_model(train) == pretrain
    assert PIPELINE.upstream_model(pretrain) is None
    assert [out.path for out in PIPELINE.data_inputs(train)] == ["data/prepared"]
    with pytest.raises(KeyError, match="no stage 'serve'"):
        PIPELINE.stage("serve")


def test_params_hash_follows_exactly_the_declared_keys() -> None:
    params = PROJECT_ROOT / "params.yaml"
    config = load_config(params)
    train, pretrain = PIPELINE.stage("train"), PIPELINE.stage("pretrain")
    # Whole sections hash as config.section_hash does (train keys did not change).
    assert params_hash(config, train) == config.section_hash("train", "model")
    assert param_values(config, ["train.precision", "model"])["train"] == {"precision": "auto"}
    for override, changes in [("train.precision=fp32", True), ("train.lr=1e-3", False)]:
        other = load_config(params, overrides=[override])
        assert (params_hash(other, pretrain) != params_hash(config, pretrain)) is changes
    assert is_enabled(config, pretrain)
    assert not is_enabled(load_config(params, overrides=["pretrain.enabled=false"]), pretrain)


def test_show_lists_the_stages_in_order_with_their_data() -> None:
    shown = runner.invoke(get_app(), ["pipeline", "show"])
    assert shown.exit_code == 0, shown.output
    lines = [line for line in shown.output.splitlines() if " (" in line and "): `" in line]
    assert [line.split(" (")[0] for line in lines] == PIPELINE.names()
    assert "train (model): `ratchet train`; reads data/prepared, models/pretrained" in shown.output
