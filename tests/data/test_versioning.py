"""DVC end to end in a temp git repo: `dvc repro`, no-op reruns, param-scoped reruns,
push to the local remote and pull into a fresh clone. (Bad data leaving data/prepared
and the remote alone is tested through the CLI in test_validate.py.)

The repository is reproduced once per module; every test gets its own copy of it
(``dvc_project``), so the tests run alone and in any order.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pytest
import yaml

from components.lineage import workspace_lineage
from components.versioning import (
    configure_remote,
    ensure_dvc_repo,
    locked_md5,
    pull,
    push,
    reproduce,
    workspace_md5,
)
from tests.conftest import PROJECT_ROOT, make_sentiment_rows
from tests.data.conftest import write_tsv

pytestmark = [pytest.mark.integration, pytest.mark.slow]

STAGES = ("validate", "prepare")


@dataclass(frozen=True)
class DvcProject:
    repo: Path
    source: Path
    remote: Path


def git(repo: Path, *args: str) -> str:
    done = subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True, check=True)
    return done.stdout


def write_source(folder: Path) -> None:
    rows = make_sentiment_rows(240, seed=21)
    write_tsv(folder / "train.tsv", rows.iloc[:200])
    write_tsv(folder / "dev.tsv", rows.iloc[200:])


def set_split_seed(repo: Path, seed: int) -> None:
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["data"]["split"]["seed"] = seed
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def project_environment(env: pytest.MonkeyPatch, state: Path) -> None:
    """The venv's ``ratchet`` and ``dvc`` on PATH, a state folder, a git identity."""
    env.setenv("PATH", f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    env.setenv("RATCHET_HOME", str(state))
    for key, value in {"NAME": "Ratchet Test", "EMAIL": "test@example.invalid"}.items():
        env.setenv(f"GIT_AUTHOR_{key}", value)
        env.setenv(f"GIT_COMMITTER_{key}", value)


@pytest.fixture(scope="module")
def reproduced_project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh git + DVC repo with the real dvc.yaml, reproduced once up to `prepare`;
    the folder holds ``src`` (the data source) beside ``repo``. Tests use copies."""
    base = tmp_path_factory.mktemp("dvc")
    source, repo = base / "src", base / "repo"
    write_source(source)
    repo.mkdir()
    shutil.copytree(PROJECT_ROOT / "components", repo / "components")  # stage deps
    for name in ("dvc.yaml", "data/.gitignore"):
        (repo / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(PROJECT_ROOT / name, repo / name)
    params = yaml.safe_load((PROJECT_ROOT / "params.yaml").read_text())
    params["data"]["source"] = "../src"
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    with pytest.MonkeyPatch.context() as env:
        project_environment(env, base / "state")
        git(repo, "init", "--quiet")
        assert ensure_dvc_repo(repo) is True
        reproduce(repo, STAGES)
    return base


@pytest.fixture
def dvc_project(
    reproduced_project: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> DvcProject:
    """This test's own copy of the reproduced repository (git, DVC cache and all)."""
    base = tmp_path / "dvc"
    shutil.copytree(reproduced_project, base, symlinks=True)
    project_environment(monkeypatch, base / "state")
    return DvcProject(repo=base / "repo", source=base / "src", remote=base / "state" / "dvc-remote")


def test_repro_writes_prepared_splits_recorded_in_the_lock(dvc_project: DvcProject) -> None:
    repo = dvc_project.repo
    assert sorted(p.name for p in (repo / "data" / "prepared").iterdir()) == [
        "manifest.json",
        "test.parquet",
        "train.parquet",
        "validation.parquet",
    ]
    assert len(pd.read_parquet(repo / "data" / "prepared" / "test.parquet")) == 40
    assert locked_md5(repo, "data/prepared") == workspace_md5(repo / "data" / "prepared")
    assert locked_md5(repo, "data/raw") == workspace_md5(dvc_project.source)


def test_second_repro_with_nothing_changed_does_nothing(dvc_project: DvcProject) -> None:
    lock_before = (dvc_project.repo / "dvc.lock").read_bytes()
    log = reproduce(dvc_project.repo, STAGES)
    assert "Running stage" not in log
    assert "Data and pipelines are up to date" in log
    assert (dvc_project.repo / "dvc.lock").read_bytes() == lock_before


def test_changing_the_split_seed_reruns_only_prepare(dvc_project: DvcProject) -> None:
    repo = dvc_project.repo
    original = workspace_md5(repo / "data" / "prepared")
    set_split_seed(repo, 7)
    log = reproduce(repo, STAGES)
    assert "Running stage 'prepare'" in log
    assert "Running stage 'validate'" not in log and "Running stage 'ingest'" not in log
    assert workspace_md5(repo / "data" / "prepared") != original
    assert locked_md5(repo, "data/prepared") == workspace_md5(repo / "data" / "prepared")


def test_push_and_pull_into_a_fresh_clone_give_identical_md5s(
    dvc_project: DvcProject, tmp_path: Path
) -> None:
    repo = dvc_project.repo
    git(repo, "add", "-A")
    git(repo, "commit", "--quiet", "-m", "data pipeline")
    push(repo, str(dvc_project.remote))
    clone = tmp_path / "clone"
    git(tmp_path, "clone", "--quiet", str(repo), str(clone))
    pull(clone, str(dvc_project.remote))
    for out in ("data/raw", "data/prepared"):
        assert workspace_md5(clone / out) == workspace_md5(repo / out) == locked_md5(clone, out)
    lineage = workspace_lineage(clone)
    assert lineage == {
        "git_commit": git(repo, "rev-parse", "HEAD").strip(),
        "git_dirty": False,
        "raw_data_md5": locked_md5(repo, "data/raw"),
        "prepared_data_md5": locked_md5(repo, "data/prepared"),
        "data_matches_lock": True,
        "feedback_rows": 0,  # no data/feedback: prepare added none
    }


def test_remote_url_is_overridden_per_workspace(dvc_project: DvcProject, tmp_path: Path) -> None:
    configure_remote(dvc_project.repo, str(tmp_path / "elsewhere"))
    local = (dvc_project.repo / ".dvc" / "config.local").read_text()
    assert str(tmp_path / "elsewhere") in local
    assert "elsewhere" not in (dvc_project.repo / ".dvc" / "config").read_text()
