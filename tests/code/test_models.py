"""Many models in one project: `ratchet new`, `--model NAME`, `ratchet models`, and what
each model keeps to itself (its folder, data lock, state subfolder, registered name)."""

from __future__ import annotations

import json
import os
import shutil
import threading
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from cli.main import get_app
from components.config import load_config
from components.locks import data_lock
from components.pipeline import render_dvc_yaml
from components.state import ProjectPaths
from tests.conftest import PROJECT_ROOT, make_sentiment_rows
from tests.data.test_token_cli import write_conll
from tests.data.test_token_validate import toy_splits

runner = CliRunner()


def squashed(text: str) -> str:
    """``text`` without whitespace: rich wraps long paths anywhere."""
    return "".join(text.split())


def ner_source(folder: Path) -> Path:
    """train/valid/test CoNLL files of the toy NER set (60 sentences)."""
    folder.mkdir(parents=True)
    for name, rows in zip(("train", "valid", "test"), toy_splits().values(), strict=True):
        write_conll(folder / f"{name}.txt", rows)
    return folder


def sentiment_source(folder: Path) -> Path:
    frame = make_sentiment_rows(120, seed=5)
    frame = frame.rename(columns={"sentence": "review", "label": "stars"})
    folder.mkdir(parents=True)
    frame.iloc[:100].to_csv(folder / "train.csv", index=False)
    frame.iloc[100:].to_csv(folder / "test.csv", index=False)
    return folder


@pytest.fixture
def project(tmp_path: Path, state_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A project with the shipped params.yaml (its default model), run from its root."""
    root = tmp_path / "project"
    root.mkdir()
    shutil.copy(PROJECT_ROOT / "params.yaml", root / "params.yaml")
    monkeypatch.chdir(root)
    return root


def new_ner(tiny_bert_dir: Path, *extra: str) -> list[str]:
    """`ratchet new ner` on ../ner (relative to the project root, where tests run)."""
    return [
        "new", "ner", "--task", "token-classification", "--data", "../ner",
        "--base", str(tiny_bert_dir), *extra,
    ]  # fmt: skip


def test_new_writes_a_model_folder_and_validates_its_data_once(
    project: Path, state_dir: Path, tiny_bert_dir: Path
) -> None:
    ner_source(project.parent / "ner")
    result = runner.invoke(get_app(), new_ner(tiny_bert_dir))
    assert result.exit_code == 0, result.output
    folder = project / "pipelines" / "ner"
    assert sorted(p.name for p in folder.iterdir()) == [".gitignore", "dvc.yaml", "params.yaml"]
    assert (folder / ".gitignore").read_text().endswith("\n/models/\n")
    config = load_config(folder / "params.yaml")
    # Relative to the model's folder, where DVC and Ratchet read it.
    assert config.data.source == "../../../ner"
    assert (folder / config.data.source / "train.txt").is_file()
    assert config.data.task == "token-classification" and config.data.labels is None
    assert config.gate.metric == "entity_f1"
    assert config.registry.model_name == "ratchet-ner"
    assert config.pretrain.extra_corpora == []
    assert config.model.base == str(tiny_bert_dir)
    assert config.serving.port == 3001  # beside the default model's 3000
    assert config.train == load_config(project / "params.yaml").train  # the project's defaults
    assert (folder / "dvc.yaml").read_text() == render_dvc_yaml(code_root="../..")
    output = " ".join(result.output.split())
    assert "created model ner in" in output and "registered as ratchet-ner" in output
    assert "validation passed: " in output and "(test=10, train=40, dev=10)" in output
    assert "ratchet --model ner retrain" in output
    # The validation's Data Docs are the model's own, in the shared state folder.
    assert (state_dir / "pipelines" / "ner" / "data-docs" / "index.html").is_file()
    assert not (state_dir / "data-docs").exists()


def test_new_writes_tabular_columns_and_profiles_into_the_params(
    project: Path, tiny_bert_dir: Path
) -> None:
    source = sentiment_source(project.parent / "reviews")
    options = ["--data", str(source), "--text-column", "review", "--label-column", "stars"]
    result = runner.invoke(
        get_app(),
        ["new", "reviews", "--task", "text-classification", *options,
         "--set", "train.lr=1e-4", "--set", "registry.model_name=reviews-sentiment"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    config = load_config(project / "pipelines" / "reviews" / "params.yaml")
    assert config.data.source == str(source)  # absolute stays absolute
    assert (config.data.text_column, config.data.label_column) == ("review", "stars")
    assert config.data.labels is None and config.data.task == "text-classification"
    assert config.gate.metric == "f1_macro"
    assert config.train.lr == 1e-4 and config.registry.model_name == "reviews-sentiment"
    ner_source(project.parent / "ner")
    assert runner.invoke(get_app(), new_ner(tiny_bert_dir)).exit_code == 0
    assert load_config(project / "pipelines" / "ner" / "params.yaml").serving.port == 3002


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["new", "default", "--task", "text-classification", "--data", "../ner"],
         "model name 'default' is taken by the project's root params.yaml"),
        (["new", "NER 2", "--task", "text-classification", "--data", "../ner"],
         "model name 'NER 2': use 1-40 lower-case letters, digits, '-' or '_'"),
        (["new", "ner", "--task", "translation", "--data", "../ner"],
         "--task 'translation': choose one of text-classification, token-classification"),
        (["new", "ner", "--task", "token-classification", "--data", "../nowhere"],
         "--data ../nowhere: "),
        (["new", "ner", "--task", "token-classification", "--data", "../ner",
          "--set", "gate.metric=accuracy"],
         "gate.metric 'accuracy' is not a metric of data.task 'token-classification'"),
    ],
)  # fmt: skip
def test_new_refuses_bad_input_and_writes_nothing(
    project: Path, arguments: list[str], message: str
) -> None:
    ner_source(project.parent / "ner")
    result = runner.invoke(get_app(), arguments)
    assert result.exit_code == 2, result.output
    assert message in " ".join(result.output.split())
    assert not (project / "pipelines").exists()


def test_new_says_where_a_relative_data_path_was_looked_for(project: Path) -> None:
    result = runner.invoke(
        get_app(), ["new", "ner", "--task", "token-classification", "--data", "../nowhere"]
    )
    assert f"{project.parent / 'nowhere'} does not exist (a relative path is taken from the " in (
        " ".join(result.output.split())
    )


def test_data_that_fails_validation_leaves_nothing_behind(
    project: Path, tiny_bert_dir: Path
) -> None:
    source = ner_source(project.parent / "ner")
    (source / "test.txt").write_text((source / "train.txt").read_text())  # test = train
    result = runner.invoke(get_app(), new_ner(tiny_bert_dir))
    assert result.exit_code == 3, result.output
    output = " ".join(result.output.split())
    assert "held-out sentences also in train" in output
    assert "Nothing was written. Fix the data, or relax the check" in output
    assert not (project / "pipelines").exists()
    relaxed = runner.invoke(
        get_app(),
        new_ner(tiny_bert_dir, "--set", "data.checks.max_test_overlap=1000",
                "--set", "data.checks.max_duplicate_fraction=1"),
    )  # fmt: skip
    assert relaxed.exit_code == 0, relaxed.output
    config = load_config(project / "pipelines" / "ner" / "params.yaml")
    assert config.data.checks.max_test_overlap == 1000


def test_an_existing_model_is_kept_unless_forced(project: Path, tiny_bert_dir: Path) -> None:
    ner_source(project.parent / "ner")
    (project / "data").mkdir()
    (project / "data" / ".gitignore").write_text("/raw\n")
    assert runner.invoke(get_app(), new_ner(tiny_bert_dir)).exit_code == 0
    folder = project / "pipelines" / "ner"
    (folder / "data" / "raw").mkdir(parents=True)
    (folder / "dvc.lock").write_text("schema: '2.0'\n")
    again = runner.invoke(get_app(), new_ner(tiny_bert_dir, "--set", "train.lr=1e-4"))
    assert again.exit_code == 2
    assert "model 'ner' exists" in " ".join(again.output.split())
    assert load_config(folder / "params.yaml").train.lr == 5e-5
    forced = runner.invoke(get_app(), new_ner(tiny_bert_dir, "--set", "train.lr=1e-4", "--force"))
    assert forced.exit_code == 0, forced.output
    assert load_config(folder / "params.yaml").train.lr == 1e-4
    assert (folder / "data" / "raw").is_dir() and (folder / "dvc.lock").is_file()  # kept
    assert (folder / "data" / ".gitignore").read_text() == "/raw\n"  # the project's
    assert [p.name for p in (project / "pipelines").iterdir()] == ["ner"]  # no staging left


def test_model_option_routes_params_and_paths_and_shares_the_state(
    project: Path, state_dir: Path, tiny_bert_dir: Path
) -> None:
    ner_source(project.parent / "ner")
    assert runner.invoke(get_app(), new_ner(tiny_bert_dir)).exit_code == 0
    shown = runner.invoke(get_app(), ["--model", "ner", "config", "show", "--json"])
    assert json.loads(shown.stdout)["registry"]["model_name"] == "ratchet-ner"
    after = runner.invoke(get_app(), ["config", "show", "--json", "--model", "ner"])
    assert json.loads(after.stdout)["data"]["task"] == "token-classification"
    default = runner.invoke(get_app(), ["config", "show", "--json"])
    assert json.loads(default.stdout)["registry"]["model_name"] == "ratchet-sst2"

    ingested = runner.invoke(get_app(), ["--model", "ner", "ingest"])
    assert ingested.exit_code == 0, ingested.output
    folder = project / "pipelines" / "ner"
    assert sorted(p.name for p in (folder / "data" / "raw").iterdir()) == [
        "test.txt", "train.txt", "valid.txt"
    ]  # fmt: skip
    assert not (project / "data").exists()

    paths = ProjectPaths.discover(folder)
    assert (paths.project_root, paths.model_root, paths.model_name) == (project, folder, "ner")
    assert paths.state_dir == state_dir == ProjectPaths.discover(project).state_dir
    assert paths.mlflow_db == ProjectPaths.discover(project).mlflow_db  # one MLflow store
    assert paths.prepared_dir == folder / "data" / "prepared"
    assert paths.resolve_data("x.txt") == folder / "x.txt"
    assert paths.resolve("configs/behaviour") == project / "configs" / "behaviour"


def test_an_unknown_model_is_an_error_listing_the_models(project: Path) -> None:
    (project / "pipelines" / "ner").mkdir(parents=True)
    shutil.copy(project / "params.yaml", project / "pipelines" / "ner" / "params.yaml")
    result = runner.invoke(get_app(), ["--model", "nre", "config", "show"])
    assert result.exit_code == 2
    assert (
        f"--model nre: the project {project} has no model 'nre' (no pipelines/nre/params.yaml);"
        " its models are default, ner. Add one with `ratchet new nre"
    ) in " ".join(result.output.split())


def test_the_default_model_keeps_the_project_root_layout(project: Path, state_dir: Path) -> None:
    paths = ProjectPaths.discover(project)
    assert paths.model_folder is None and paths.model_root == project
    assert paths.model_name == "default"
    assert (paths.raw_dir, paths.metrics_dir) == (project / "data" / "raw", project / "metrics")
    assert (paths.data_docs_dir, paths.reports_dir) == (
        state_dir / "data-docs",
        state_dir / "reports",
    )
    # A folder named pipelines/<x> outside a project is a project root of its own.
    lone = project.parent / "elsewhere" / "pipelines" / "x"
    lone.mkdir(parents=True)
    assert ProjectPaths.discover(lone).project_root == lone


def test_two_models_keep_their_data_locks_and_run_records_apart(
    project: Path, state_dir: Path
) -> None:
    folder = project / "pipelines" / "ner"
    folder.mkdir(parents=True)
    shutil.copy(project / "params.yaml", folder / "params.yaml")
    default, ner = ProjectPaths.discover(project), ProjectPaths.discover(folder)
    for kind in ("raw_dir", "prepared_dir", "metrics_dir", "finetuned_dir", "data_docs_dir"):
        assert getattr(default, kind) != getattr(ner, kind), kind
    assert ner.reports_dir == state_dir / "pipelines" / "ner" / "reports"
    from components.feedback import store_path
    from components.traffic import traffic_dir

    assert traffic_dir(ner) == state_dir / "pipelines" / "ner" / "traffic"
    assert store_path(default) != store_path(ner)

    # While a retrain of the default model writes its data, the other model's data
    # folder is free (the locks are per folder).
    held, release = threading.Event(), threading.Event()

    def hold_default_data() -> None:
        with data_lock(default.raw_dir.parent):
            held.set()
            release.wait(10)

    holder = threading.Thread(target=hold_default_data)
    holder.start()
    try:
        assert held.wait(10)
        with data_lock(ner.raw_dir.parent, timeout_s=0.5) as lock_file:
            assert lock_file == folder / "data" / ".ratchet-data.lock"
    finally:
        release.set()
        holder.join()


def test_retrain_slots_are_per_registered_model(project: Path) -> None:
    from flows.slots import concurrency_limit_name

    folder = project / "pipelines" / "ner"
    folder.mkdir(parents=True)
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["registry"]["model_name"] = "ratchet-ner"
    (folder / "params.yaml").write_text(yaml.safe_dump(params))
    names = {
        concurrency_limit_name(load_config(path))
        for path in (project / "params.yaml", folder / "params.yaml")
    }
    assert names == {"ratchet-retrain-ratchet-sst2", "ratchet-retrain-ratchet-ner"}


def test_models_lists_each_model_with_its_own_champion(project: Path, state_dir: Path) -> None:
    from mlflow import MlflowClient

    folder = project / "pipelines" / "ner"
    folder.mkdir(parents=True)
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["registry"]["model_name"] = "ratchet-ner"
    params["data"].update(task="token-classification", labels=None)
    params["gate"]["metric"] = "entity_f1"
    (folder / "params.yaml").write_text(yaml.safe_dump(params))
    client = MlflowClient(os.environ["MLFLOW_TRACKING_URI"])
    for name, champion in (("ratchet-sst2", "2"), ("ratchet-ner", "1")):
        client.create_registered_model(name)
        for _ in range(int(champion)):
            client.create_model_version(name, source=str(project))
        client.set_registered_model_alias(name, "champion", champion)
    result = runner.invoke(get_app(), ["models", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == [
        {"name": "default", "task": "text-classification", "registered_name": "ratchet-sst2",
         "champion": "2", "params": "params.yaml"},
        {"name": "ner", "task": "token-classification", "registered_name": "ratchet-ner",
         "champion": "1", "params": "pipelines/ner/params.yaml"},
    ]  # fmt: skip
    table = runner.invoke(get_app(), ["models"])
    assert "ratchet-ner" in table.output and "ratchet-sst2" in table.output


def test_pipeline_dvc_yaml_covers_every_model_folder(project: Path) -> None:
    folder = project / "pipelines" / "ner"
    folder.mkdir(parents=True)
    shutil.copy(project / "params.yaml", folder / "params.yaml")
    written = runner.invoke(get_app(), ["pipeline", "dvc-yaml"])
    assert written.exit_code == 0, written.output
    assert (project / "dvc.yaml").read_text() == render_dvc_yaml()
    assert (folder / "dvc.yaml").read_text() == render_dvc_yaml(code_root="../..")
    (folder / "dvc.yaml").write_text(render_dvc_yaml())  # the root's, wrong here
    checked = runner.invoke(get_app(), ["pipeline", "dvc-yaml", "--check"])
    assert checked.exit_code == 2
    expected = f"{folder / 'dvc.yaml'} differs from the pipeline declared"
    assert squashed(expected) in squashed(checked.output)
    alone = runner.invoke(get_app(), ["--model", "ner", "pipeline", "dvc-yaml"])
    assert alone.exit_code == 0
    assert squashed(alone.output) == squashed(f"wrote {folder / 'dvc.yaml'}")
    again = runner.invoke(get_app(), ["pipeline", "dvc-yaml", "--check"])
    assert again.exit_code == 0, again.output


def test_a_model_folder_finds_the_project_state_without_ratchet_home(
    project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("RATCHET_HOME")
    folder = project / "pipelines" / "ner"
    folder.mkdir(parents=True)
    shutil.copy(project / "params.yaml", folder / "params.yaml")
    paths = ProjectPaths.discover(folder)
    assert paths.state_dir == project / ".ratchet"  # one state: not pipelines/ner/.ratchet
    assert paths.mlflow_db == project / ".ratchet" / "mlflow.db"
    assert paths.data_docs_dir == project / ".ratchet" / "pipelines" / "ner" / "data-docs"


def test_models_names_the_model_whose_params_are_invalid(project: Path) -> None:
    folder = project / "pipelines" / "ner"
    folder.mkdir(parents=True)
    (folder / "params.yaml").write_text("data:\n  task: translation\n")
    result = runner.invoke(get_app(), ["models"])
    assert result.exit_code == 2
    assert squashed(f"model ner ({folder / 'params.yaml'}): invalid configuration") in squashed(
        result.output
    )


def test_events_name_the_model_params_the_trigger_retrains(project: Path) -> None:
    from components.events import model_resource

    folder = project / "pipelines" / "ner"
    folder.mkdir(parents=True)
    shutil.copy(project / "params.yaml", folder / "params.yaml")
    assert ProjectPaths.discover(project).params_in_project == "params.yaml"
    params = ProjectPaths.discover(folder).params_in_project
    assert params == "pipelines/ner/params.yaml"
    assert model_resource("ratchet-ner", "2", params) == {
        "prefect.resource.id": "ratchet.model.ratchet-ner",
        "ratchet.model": "ratchet-ner",
        "ratchet.version": "2",
        "ratchet.params": "pipelines/ner/params.yaml",
    }
    retrain_on_demand = next(
        deployment
        for deployment in yaml.safe_load((PROJECT_ROOT / "prefect.yaml").read_text())["deployments"]
        if deployment["name"] == "retrain-on-demand"
    )
    assert {trigger["parameters"]["params"] for trigger in retrain_on_demand["triggers"]} == {
        "{{ event.resource.get('ratchet.params', 'params.yaml') }}"
    }
