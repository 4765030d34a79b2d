"""The retrain flow end to end on a tiny model: real Prefect (ephemeral), DVC, MLflow, BentoML.

One session-scoped Prefect test harness serves every flow run here (starting Prefect's
temporary API costs seconds per start).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from components.errors import ConfigError, DataValidationError
from tests.flows.conftest import flow_overrides, make_project, write_tsv

pytestmark = [pytest.mark.integration, pytest.mark.slow]

# A key given with --set, as a user may: it must be found in no file the runs leave.
API_KEY = "ratchet-test-key-5f0c9e2a71d84b36"


@pytest.fixture(scope="module", autouse=True)
def prefect_harness() -> Iterator[None]:
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


def run_flow(project: Path, overrides: list[str], **options: object) -> dict:
    from flows.retrain import retrain

    return retrain(params=str(project / "params.yaml"), overrides=overrides, **options)


def registry_state(model_name: str = "ratchet-sst2") -> tuple[list[str], dict[str, str]]:
    from mlflow import MlflowClient

    client = MlflowClient()
    found = client.search_model_versions(f"name='{model_name}'")
    versions = sorted(str(model_version.version) for model_version in found)
    if not versions:
        return [], {}
    aliases = client.get_registered_model(model_name).aliases
    return versions, {alias: str(version) for alias, version in aliases.items()}


def files_containing(roots: list[Path], needle: str) -> list[Path]:
    """Every file under ``roots`` whose bytes contain ``needle`` (SQLite stores included)."""
    data = needle.encode()
    found = []
    for root in roots:
        found += [path for path in root.rglob("*") if path.is_file() and data in path.read_bytes()]
    return found


def prefect_database_dir() -> Path:
    """The folder of the Prefect test harness's SQLite database (and its WAL files)."""
    from prefect.settings import PREFECT_SERVER_DATABASE_CONNECTION_URL

    url: Any = PREFECT_SERVER_DATABASE_CONNECTION_URL.value()
    text = url.get_secret_value() if hasattr(url, "get_secret_value") else str(url)
    return Path(text.partition(":///")[2]).parent


def bentoml_home() -> Path:
    from bentoml._internal.configuration.containers import BentoMLContainer

    return Path(BentoMLContainer.bentoml_home.get())


def published_reports() -> dict[str, str]:
    """``flow run name -> markdown`` of the run reports published as Prefect artifacts."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    from flows.retrain import REPORT_ARTIFACT_KEY

    key = ArtifactFilter(key=ArtifactFilterKey(any_=[REPORT_ARTIFACT_KEY]))
    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(artifact_filter=key)
    return {
        str(artifact.description).removeprefix("retrain run ").split(":")[0]: str(artifact.data)
        for artifact in artifacts
    }


def step_statuses(state_dir: Path, summary_version: str | None = None) -> list[dict]:
    records = sorted((state_dir / "reports").glob("*.json"), key=lambda p: p.stat().st_mtime)
    return json.loads(records[-1].read_text())["steps"]


def test_first_run_promotes_and_builds_then_rerun_is_cached(
    flow_project: Path, state_dir: Path, tiny_bert_dir: Path
) -> None:
    overrides = flow_overrides(tiny_bert_dir, **{"serving.api_key": API_KEY})
    summary = run_flow(flow_project, overrides)

    assert summary["outcome"] == "promoted", summary
    assert summary["registered_version"] == "1"
    assert summary["bento"].startswith("ratchet-sst2")
    versions, aliases = registry_state()
    assert versions == ["1"]
    assert aliases["champion"] == "1"
    # Truncation was measured before training and reached the version's lineage.
    from mlflow import MlflowClient

    tags = MlflowClient().get_model_version("ratchet-sst2", "1").tags
    assert tags["data.truncated_fraction_train"] == "0.0"
    assert tags["data.truncated_fraction_test"] == "0.0"
    assert summary["truncation"] == {
        "data.truncated_fraction_train": 0.0,
        "data.truncated_fraction_test": 0.0,
    }
    # The data a model was trained on is named by md5 in dvc.lock and pushed to the remote.
    lock = yaml.safe_load((flow_project / "dvc.lock").read_text())
    prepared = next(
        out for out in lock["stages"]["prepare"]["outs"] if out["path"] == "data/prepared"
    )
    assert prepared["md5"] == summary["prepared_data_md5"]
    # The snapshot was validated in data/incoming, but the report (a DVC metric) names
    # data/raw, as `dvc repro` writes it: no machine-specific path in a committed file.
    report = json.loads((flow_project / "metrics" / "data_validation.json").read_text())
    assert report["source"] == "data/raw"
    assert any((state_dir / "dvc-remote").rglob("*")), "nothing was pushed to the DVC remote"
    reports = list((state_dir / "reports").glob("*.md"))
    assert reports and "completed" in reports[0].read_text()

    # Step caches: reused ones count as used today; one untouched for 30 days goes.
    day = 86_400.0
    model_folders = sorted((state_dir / "artifacts").iterdir())
    assert [folder.name.split("-")[0] for folder in model_folders] == ["pretrain", "train"]
    for folder in model_folders:
        os.utime(folder, (time.time() - day, time.time() - day))
    orphan = state_dir / "checkpoints" / "train-of-a-run-that-crashed"
    (orphan / "step-00000004").mkdir(parents=True)
    for stale in (orphan / "step-00000004", orphan):
        os.utime(stale, (time.time() - 30 * day, time.time() - 30 * day))
    started = time.time()
    again = run_flow(flow_project, overrides)

    assert not orphan.exists()
    assert sorted((state_dir / "artifacts").iterdir()) == model_folders
    assert all(folder.stat().st_mtime >= started - 1 for folder in model_folders)
    assert again["outcome"] == "unchanged"
    assert again["registered_version"] == "1"
    assert registry_state()[0] == ["1"], "a rerun with nothing changed registered a new version"
    statuses = {step["name"]: step["status"] for step in step_statuses(state_dir)}
    assert statuses["pretrain"] == "cached"
    assert statuses["train"] == "cached"

    # The nightly deployment: same data md5, config and code as the champion -> a fast skip.
    # It trains nothing, yet the champion's caches count as used: pruning keeps them.
    for folder in model_folders:
        os.utime(folder, (time.time() - 13.9 * day, time.time() - 13.9 * day))
    started = time.time()
    nightly = run_flow(flow_project, overrides, skip_if_unchanged=True)

    assert nightly["outcome"] == "skipped"
    assert "train" not in {step["name"] for step in step_statuses(state_dir)}
    assert registry_state()[0] == ["1"]
    assert all(folder.stat().st_mtime >= started - 1 for folder in model_folders)
    # Each run's report is also the flow run's Prefect artifact.
    reports = {path.stem: path.read_text() for path in (state_dir / "reports").glob("*.md")}
    published = published_reports()
    assert len(reports) == 3
    assert {name: published.get(name) for name in reports} == reports

    # The API key is in no MLflow param, artifact or tag, no Prefect flow-run parameter,
    # no report, no Bento: grep every byte the three runs left.
    prefect_store = prefect_database_dir()
    roots = [state_dir, flow_project, prefect_store, bentoml_home()]
    assert files_containing(roots, API_KEY) == []
    assert files_containing([prefect_store], "serving.api_key=***"), "overrides not stored?"
    bento_yaml = bentoml_home() / "bentos" / summary["bento"].replace(":", "/") / "bento.yaml"
    assert yaml.safe_load(bento_yaml.read_text())["args"]["auth_required"] is True


def test_rerun_finishes_a_gate_that_a_crash_interrupted(
    flow_project: Path, tiny_bert_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from components import registry

    overrides = flow_overrides(tiny_bert_dir)
    move_champion = registry.move_champion

    def killed(*args: object) -> None:
        raise RuntimeError("killed between the decision and the alias move")

    monkeypatch.setattr(registry, "move_champion", killed)
    with pytest.raises(RuntimeError, match="killed between"):
        run_flow(flow_project, overrides)
    assert registry_state() == (["1"], {"challenger": "1"})

    monkeypatch.setattr(registry, "move_champion", move_champion)
    summary = run_flow(flow_project, overrides)

    # The rerun found version 1 ungated and finished it, rather than calling it unchanged.
    assert summary["outcome"] == "promoted", summary
    assert summary["registered_version"] == "1"
    assert summary["bento"].startswith("ratchet-sst2")
    assert registry_state() == (["1"], {"challenger": "1", "champion": "1"})
    # The champion's Bento went missing (deleted, another machine): a rerun builds it.
    assert champion_bentos(flow_project) == [summary["bento"]]
    delete_bentos(flow_project, summary["bento"])
    again = run_flow(flow_project, overrides)
    assert again["outcome"] == "unchanged"
    assert champion_bentos(flow_project) == [again["bento"]] != [summary["bento"]]


def champion_bentos(project: Path) -> list[str]:
    """Tags of the Bentos built for the champion's registry version."""
    from components.state import ProjectPaths
    from serving.build import bentoml_home, bentos_of_version, use_bentoml_home

    champion = registry_state()[1]["champion"]
    with use_bentoml_home(bentoml_home(ProjectPaths.discover(project))):
        return [str(bento.tag) for bento in bentos_of_version("ratchet-sst2", champion)]


def delete_bentos(project: Path, *tags: str) -> None:
    import bentoml

    from components.state import ProjectPaths
    from serving.build import bentoml_home, use_bentoml_home

    with use_bentoml_home(bentoml_home(ProjectPaths.discover(project))):
        for tag in tags:
            bentoml.bentos.delete(tag)


def test_a_failed_bento_build_leaves_the_alias_and_the_rerun_catches_up(
    flow_project: Path, tiny_bert_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import serving.build
    from components.errors import ServingError
    from components.registry import version_tags

    overrides = flow_overrides(tiny_bert_dir)
    build_bento = serving.build.build_bento

    def broken_build(*args: object, **kwargs: object) -> str:
        raise ServingError("building the Bento failed: no space left on device")

    monkeypatch.setattr(serving.build, "build_bento", broken_build)
    with pytest.raises(ServingError, match="no space left on device"):
        run_flow(flow_project, overrides)
    # Nothing points at a model without a Bento; the decision says why it did not move.
    assert registry_state() == (["1"], {"challenger": "1"})
    from mlflow import MlflowClient

    tags = version_tags(MlflowClient(), "ratchet-sst2", "1")
    assert tags["gate.reason"].startswith("blocked before the alias move: the Bento failed")

    monkeypatch.setattr(serving.build, "build_bento", build_bento)
    summary = run_flow(flow_project, overrides)
    assert summary["outcome"] == "promoted", summary
    assert registry_state() == (["1"], {"challenger": "1", "champion": "1"})
    assert champion_bentos(flow_project) == [summary["bento"]]


def test_invalid_data_fails_at_validation_and_registers_nothing(
    state_dir: Path, tiny_bert_dir: Path, tmp_path: Path
) -> None:
    bad = tmp_path / "bad"
    write_tsv(bad / "train.tsv", [(f"a fine film {i}", i % 2) for i in range(40)] + [("dull", 7)])
    write_tsv(bad / "dev.tsv", [("lovely", 1), ("awful", 0)])
    project = make_project(tmp_path / "project", bad)

    with pytest.raises(DataValidationError, match="label") as failure:
        run_flow(project, flow_overrides(tiny_bert_dir))

    assert registry_state() == ([], {})
    assert not (project / "data" / "prepared").exists()
    # The rejected snapshot never became data/raw; it waits in data/incoming, where the
    # error's file and line point.
    assert not (project / "data" / "raw").exists()
    rejected = project / "data" / "incoming" / "train.tsv"
    assert rejected.read_bytes() == (bad / "train.tsv").read_bytes()
    assert f"{rejected} line 42" in str(failure.value)
    steps = step_statuses(state_dir)
    assert [(step["name"], step["status"]) for step in steps] == [
        ("ingest", "done"),
        ("validate", "failed"),
    ]
    assert not (project / "dvc.lock").exists(), "a rejected snapshot was versioned"
    report = next((state_dir / "reports").glob("*.md")).read_text()
    assert "failed" in report and "label" in report


def test_a_named_suite_for_other_labels_stops_the_run_before_training(
    tmp_path: Path, state_dir: Path, tiny_bert_dir: Path
) -> None:
    # Issue 21: a 3-class tweet-sentiment set with a 2-class suite trained for minutes,
    # then stopped at evaluation. The preflight stops it once the data is prepared.
    words = {"negative": "awful", "neutral": "okay", "positive": "great"}
    rows = [(f"tweet {i} was {w}", label) for i in range(90) for label, w in words.items()]
    write_tsv(tmp_path / "tweets" / "test.tsv", rows)  # one file, whatever its name: split
    project = make_project(tmp_path / "project", tmp_path / "tweets" / "test.tsv")
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["data"]["labels"] = None  # inferred: negative, neutral, positive
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    (project / "checks.yaml").write_text(
        "labels: [negative, positive]\n"
        "checks:\n  - {name: x, type: MFT, texts: [t], expect_label: negative}\n"
    )
    overrides = flow_overrides(tiny_bert_dir, **{"eval.behaviour_checks": "checks.yaml"})
    with pytest.raises(
        ConfigError,
        match=r"eval.behaviour_checks names checks.yaml, a suite for labels "
        r"\['negative', 'positive'\], but the data's labels are "
        r"\['negative', 'neutral', 'positive'\]",
    ):
        run_flow(project, overrides)
    steps = [step["name"] for step in step_statuses(state_dir)]
    assert steps == ["ingest", "validate", "prepare", "version-data", "push-data"]
    for folder in (state_dir / "artifacts", state_dir / "checkpoints"):
        assert not folder.is_dir() or not any(folder.iterdir()), f"{folder} was written"
