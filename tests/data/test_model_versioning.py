"""DVC in a model folder: `dvc repro` of pipelines/<name>/dvc.yaml runs its stages there,
records them in that folder's dvc.lock, and push, lineage and `ratchet data commit` work
on the model's folder while the project root's pipeline stays untouched."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from cli.main import get_app
from components.lineage import workspace_lineage
from components.pipeline import render_dvc_yaml
from components.versioning import ensure_dvc_repo, locked_md5, push, reproduce
from tests.conftest import PROJECT_ROOT, add_model_folder
from tests.data.test_versioning import git, project_environment, write_source

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_a_model_folder_is_its_own_dvc_pipeline(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source, repo = tmp_path / "src", tmp_path / "repo"
    write_source(source)
    repo.mkdir()
    shutil.copytree(PROJECT_ROOT / "components", repo / "components")  # stage deps
    shutil.copy(PROJECT_ROOT / "params.yaml", repo / "params.yaml")
    (repo / "dvc.yaml").write_text(render_dvc_yaml())
    folder = add_model_folder(
        repo,
        "reviews",
        PROJECT_ROOT / "params.yaml",
        data__source="../../../src",  # relative to the model's folder
        registry__model_name="ratchet-reviews",
    )
    project_environment(monkeypatch, tmp_path / "state")
    git(repo, "init", "--quiet")
    assert ensure_dvc_repo(repo) is True
    assert ensure_dvc_repo(folder) is False  # the project's repository

    reproduce(folder, ("validate", "prepare"))
    lock = yaml.safe_load((folder / "dvc.lock").read_text())
    assert sorted(lock["stages"]) == ["ingest", "prepare", "validate"]
    assert lock["stages"]["ingest"]["deps"][0]["path"] == "../../../src"
    assert (folder / "data" / "prepared" / "manifest.json").is_file()
    assert not (repo / "dvc.lock").exists() and not (repo / "data").exists()

    lineage = workspace_lineage(folder)
    prepared_md5 = locked_md5(folder, "data/prepared")
    assert prepared_md5 is not None and lineage["prepared_data_md5"] == prepared_md5
    assert lineage["data_matches_lock"] is True
    remote = tmp_path / "state" / "dvc-remote"
    push(folder, str(remote))  # the remote is configured on the project's .dvc/
    assert "remote" in (repo / ".dvc" / "config.local").read_text()
    assert not (folder / ".dvc").exists()
    assert any(remote.rglob("*")), "nothing was pushed"

    # `ratchet --model reviews data lineage` reads the same folder.
    monkeypatch.chdir(repo)
    result = CliRunner().invoke(get_app(), ["--model", "reviews", "data", "lineage"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["prepared_data_md5"] == prepared_md5
