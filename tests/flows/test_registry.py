"""The registry flow against a real MLflow store: register, gate, aliases, rollback, CLI.

Models are the tiny classifiers from ``tests/conftest.py``: ``good`` learns the polar words,
``shuffled`` was trained on permuted labels. Each test runs the same steps the retrain flow
runs: parent run -> evaluate stage run -> log model -> register challenger -> gate.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pytest
import yaml
from mlflow import MlflowClient
from typer.testing import CliRunner

from cli import options as cli_options
from cli.main import get_app
from components import aliases, registry, registry_reports, tracking
from components.behaviour import load_behaviour_suite
from components.config import RatchetConfig, ServingConfig, TrackingConfig
from components.errors import GateRejected, RegistryError
from components.evaluate import EvaluationReport, evaluate_model
from components.gate import GateDecision
from components.mlflow_model import log_classifier_model
from components.promotion import apply_gate, promote_manually
from components.state import ProjectPaths
from tests.conftest import PROJECT_ROOT, prepared_split

pytestmark = pytest.mark.slow

LABELS = ["negative", "positive"]
LINEAGE = {
    "git_commit": "0123abcd",
    "git_dirty": False,
    "raw_data_md5": "aaaa.dir",
    "prepared_data_md5": "bbbb.dir",
    "base_model_id": "tiny-bert",
    "base_model_hash": "cafe",
    "flow_run_id": "flow-1",
}


@pytest.fixture(scope="module")
def reports(
    tiny_classifiers: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> Callable[[str, int], EvaluationReport]:
    """Evaluations of the tiny models, computed once per (model, test seed)."""
    from components.config import EvalConfig

    suite = load_behaviour_suite(PROJECT_ROOT / "configs" / "behaviour" / "sentiment-en.yaml")
    cache: dict[tuple[str, int], EvaluationReport] = {}

    def report(kind: str, test_seed: int = 5) -> EvaluationReport:
        if (kind, test_seed) not in cache:
            out = tmp_path_factory.mktemp(f"eval-{kind}-{test_seed}")
            cache[kind, test_seed] = evaluate_model(
                tiny_classifiers[kind],
                prepared_split(80, seed=test_seed),
                LABELS,
                EvalConfig(latency_samples=3, batch_size=32),
                out,
                suite,
            )
        return cache[kind, test_seed]

    return report


@pytest.fixture(scope="module")
def empty_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An MLflow SQLite file with its schema created once (migrations take seconds)."""
    database = tmp_path_factory.mktemp("store") / "mlflow.db"
    MlflowClient(tracking_uri=f"sqlite:///{database}").search_experiments()
    return database


@pytest.fixture
def config(tiny_config: RatchetConfig, state_dir: Path, empty_store: Path) -> RatchetConfig:
    """Smoke config with a 0.9 accuracy floor, tracking set up in the isolated state folder."""
    shutil.copyfile(empty_store, state_dir / "mlflow.db")
    tracking.setup_tracking(tiny_config, ProjectPaths.discover(PROJECT_ROOT))
    gate = tiny_config.gate.model_copy(update={"min_accuracy": 0.9})
    return tiny_config.model_copy(update={"gate": gate})


def publish(
    config: RatchetConfig,
    model_dir: Path,
    report: EvaluationReport,
) -> tuple[str, GateDecision]:
    """The retrain flow's tail: evaluate run, log, register, gate. Returns (version, decision)."""
    name = config.registry.model_name
    with tracking.parent_run(config, run_name="test-flow"), tracking.stage_run("evaluate") as run:
        model_uri = log_classifier_model(model_dir).model_uri
        version = registry.register_challenger(
            name, model_uri, report, LINEAGE, config, run.info.run_id
        )
    decision = apply_gate(name, str(version.version), report, config.gate)
    return str(version.version), decision


def current_aliases(config: RatchetConfig) -> dict[str, str]:
    return registry.aliases(MlflowClient(), config.registry.model_name)


def test_floor_then_better_then_worse(
    config: RatchetConfig, tiny_classifiers: dict[str, Path], reports: Callable, tmp_path: Path
) -> None:
    good, shuffled = reports("good"), reports("shuffled")
    assert good.accuracy >= 0.95 and shuffled.accuracy <= 0.7

    version, decision = publish(config, tiny_classifiers["shuffled"], shuffled)
    assert (version, decision.promote) == ("1", False)
    assert "below the floor 0.9000" in decision.reason
    assert current_aliases(config) == {"challenger": "1"}

    version, decision = publish(config, tiny_classifiers["good"], good)
    assert (version, decision.promote, decision.comparison) == ("2", True, None)
    assert current_aliases(config) == {"challenger": "2", "champion": "2"}

    version, decision = publish(config, tiny_classifiers["shuffled"], shuffled)
    assert (version, decision.promote) == ("3", False)
    assert decision.champion_version == "2" and not decision.champion_rescored
    assert decision.comparison is not None and decision.comparison.mcnemar_p_value < 0.05
    assert current_aliases(config) == {"challenger": "3", "champion": "2"}

    client = MlflowClient()
    rejected = client.get_model_version(config.registry.model_name, "3")
    assert rejected.tags["gate.decision"] == "rejected"
    assert rejected.tags["gate.reason"] == decision.reason
    assert rejected.tags["git_commit"] == "0123abcd"
    assert rejected.tags["prepared_data_md5"] == "bbbb.dir"
    assert rejected.tags["config_hash"] == config.build_hash()
    assert rejected.tags["parent_run_id"]
    assert "## Promotion decision\n\n**REJECTED**" in rejected.description
    assert "| accuracy |" in rejected.description and "champion" in rejected.description
    decision_file = tracking.download_run_artifact(
        registry.evaluation_run_id(rejected), "gate/decision-v3.json", tmp_path
    )
    assert json.loads(decision_file.read_text())["outcome"] == "rejected"


def test_better_challenger_promoted_and_rollback(
    config: RatchetConfig, tiny_classifiers: dict[str, Path], reports: Callable
) -> None:
    config = config.model_copy(update={"gate": config.gate.model_copy(update={"min_accuracy": 0})})
    assert publish(config, tiny_classifiers["shuffled"], reports("shuffled"))[1].promote
    version, decision = publish(config, tiny_classifiers["good"], reports("good"))
    assert decision.promote and decision.comparison is not None
    assert decision.comparison.difference > 0.2
    assert current_aliases(config) == {
        "challenger": "2",
        "champion": "2",
        "previous-champion": "1",
    }

    demoted, restored = aliases.rollback(config.registry.model_name, reason="bad canary", by="ana")
    assert (demoted, restored) == ("2", "1")
    assert current_aliases(config) == {"challenger": "2", "champion": "1"}
    tags = MlflowClient().get_model_version(config.registry.model_name, "1").tags
    assert (tags["rollback.by"], tags["rollback.reason"]) == ("ana", "bad canary")
    with pytest.raises(RegistryError, match="no 'previous-champion' alias"):
        aliases.rollback(config.registry.model_name, reason="again")


def test_crash_before_alias_move_leaves_champion(
    config: RatchetConfig,
    tiny_classifiers: dict[str, Path],
    reports: Callable,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    config = config.model_copy(update={"gate": config.gate.model_copy(update={"min_accuracy": 0})})
    publish(config, tiny_classifiers["shuffled"], reports("shuffled"))

    def crash(*args: object) -> None:
        raise RuntimeError("injected crash before the alias move")

    monkeypatch.setattr(registry, "move_champion", crash)
    with pytest.raises(RuntimeError, match="injected crash"):
        publish(config, tiny_classifiers["good"], reports("good"))
    assert current_aliases(config) == {"challenger": "2", "champion": "1"}
    # The decision was recorded, but the gate is unfinished until the alias has moved.
    tags = registry.version_tags(MlflowClient(), config.registry.model_name, "2")
    assert tags["gate.decision"] == "promoted" and registry.gate_pending(tags)
    assert not registry.gate_pending(
        registry.version_tags(MlflowClient(), config.registry.model_name, "1")
    )


def test_a_challenger_with_other_labels_is_not_compared_but_rejected(
    config: RatchetConfig, tiny_classifiers: dict[str, Path], reports: Callable
) -> None:
    from dataclasses import replace

    publish(config, tiny_classifiers["good"], reports("good"))
    # The same predictions, but class id 0 now means "positive": a different task.
    swapped = replace(reports("good"), labels=["positive", "negative"])
    version, decision = publish(config, tiny_classifiers["good"], swapped)

    assert not decision.promote
    assert "labels ['positive', 'negative'] differ from champion v1's" in decision.reason
    assert decision.failed_conditions == ["labels differ from the champion's"]
    assert current_aliases(config) == {"challenger": "2", "champion": "1"}
    tags = registry.version_tags(MlflowClient(), config.registry.model_name, version)
    assert tags["gate.decision"] == "rejected" and not registry.gate_pending(tags)


def test_a_repeated_registration_finishes_the_first_version(
    config: RatchetConfig, tiny_classifiers: dict[str, Path], reports: Callable
) -> None:
    """A register task retried after a server error must not register a duplicate."""
    name, report = config.registry.model_name, reports("good")
    with tracking.parent_run(config, run_name="test-flow"), tracking.stage_run("evaluate") as run:
        model_uri = log_classifier_model(tiny_classifiers["good"]).model_uri
        first = registry.register_challenger(
            name, model_uri, report, LINEAGE, config, run.info.run_id
        )
        again = registry.register_challenger(
            name, model_uri, report, LINEAGE, config, run.info.run_id
        )
    client = MlflowClient()
    assert str(first.version) == str(again.version) == "1"
    assert [str(v.version) for v in client.search_model_versions(f"name='{name}'")] == ["1"]
    assert registry.gate_pending(registry.version_tags(client, name, "1"))
    apply_gate(name, "1", report, config.gate)
    assert not registry.gate_pending(registry.version_tags(client, name, "1"))
    assert current_aliases(config) == {"challenger": "1", "champion": "1"}


def test_champion_rescored_when_test_split_changed(
    config: RatchetConfig, tiny_classifiers: dict[str, Path], reports: Callable
) -> None:
    publish(config, tiny_classifiers["good"], reports("good", 5))
    version, decision = publish(config, tiny_classifiers["good"], reports("good", 9))
    assert decision.champion_rescored
    assert decision.rescore_note.startswith("test split changed (champion md5")
    assert "re-scored on the challenger's 80 test examples" in decision.rescore_note
    assert decision.comparison is not None and decision.comparison.difference == 0.0
    assert decision.promote  # the same model is not worse than itself
    card = MlflowClient().get_model_version(config.registry.model_name, version).description
    assert "test split changed" in card


def test_manual_promotion_goes_through_the_gate(
    config: RatchetConfig, tiny_classifiers: dict[str, Path], reports: Callable
) -> None:
    name = config.registry.model_name
    publish(config, tiny_classifiers["good"], reports("good"))
    publish(config, tiny_classifiers["shuffled"], reports("shuffled"))
    with pytest.raises(GateRejected, match="v2 rejected: accuracy"):
        promote_manually(name, "2", config.gate, reason="try it", by="bob")
    assert current_aliases(config)["champion"] == "1"
    tags = MlflowClient().get_model_version(name, "2").tags
    assert tags["promotion_attempt.by"] == "bob" and "promotion.by" not in tags
    with pytest.raises(RegistryError, match="needs a reason"):
        promote_manually(name, "2", config.gate, reason=" ")

    decision = promote_manually(name, "2", config.gate, reason="hotfix", by="bob", force=True)
    assert decision.forced and decision.promote
    assert current_aliases(config) == {
        "challenger": "2",
        "champion": "2",
        "previous-champion": "1",
    }
    tags = MlflowClient().get_model_version(name, "2").tags
    assert (tags["promotion.by"], tags["promotion.reason"]) == ("bob", "hotfix")
    assert tags["gate.decision"] == "promoted"


def test_list_show_compare(
    config: RatchetConfig, tiny_classifiers: dict[str, Path], reports: Callable
) -> None:
    name = config.registry.model_name
    publish(config, tiny_classifiers["good"], reports("good"))
    publish(config, tiny_classifiers["shuffled"], reports("shuffled"))

    rows = registry_reports.list_versions(name)
    assert [(row["version"], row["aliases"], row["gate"]) for row in rows] == [
        ("2", ["challenger"], "rejected"),
        ("1", ["champion"], "promoted"),
    ]
    assert rows[1]["accuracy"] == pytest.approx(reports("good").accuracy, abs=1e-6)
    assert rows[0]["prepared_data_md5"] == "bbbb.dir"

    shown = registry_reports.show_version(name, "1")
    assert shown["model_card"].startswith(f"# {name} — version 1")
    assert shown["aliases"] == ["champion"]

    compared = registry_reports.compare_versions(name, "1", "2")
    good_acc, bad_acc = reports("good").accuracy, reports("shuffled").accuracy
    assert compared["metrics"]["accuracy"]["delta"] == pytest.approx(bad_acc - good_acc)
    assert compared["significance"]["b_minus_a_accuracy"] == pytest.approx(bad_acc - good_acc)
    assert not compared["significance"]["rescored"]
    assert sum(map(sum, compared["confusion_matrices"]["a"])) == 80
    assert compared["lineage_diff"] == []
    assert compared["config_diff"] == []
    frame = pd.DataFrame(compared["confusion_matrices"]["b"])
    assert frame.to_numpy().trace() == round(bad_acc * 80)


def run_cli(*args: str) -> str:
    """Run ``ratchet <args>`` against the project's params.yaml, serving torch as the
    ``config`` fixture's smoke profile does (a Bento built there is reused); returns stdout."""
    params = str(PROJECT_ROOT / "params.yaml")
    torch = ["--set", "serving.runtime=torch"]
    result = CliRunner().invoke(get_app(), [*args, "--params", params, *torch])
    assert result.exit_code == 0, result.output
    return result.stdout


def with_secrets(config: RatchetConfig, api_key: str, dvc_password: str) -> RatchetConfig:
    """``config`` with an API key and a DVC remote URL holding a password."""
    serving = ServingConfig.model_validate({**config.serving.model_dump(), "api_key": api_key})
    remote = f"https://ci:{dvc_password}@dvc.example.com/store"
    tracking_section = TrackingConfig.model_validate(
        {**config.tracking.model_dump(), "dvc_remote_url": remote}
    )
    return config.model_copy(update={"serving": serving, "tracking": tracking_section})


SECRETS = ("key-of-version-one-8c1d", "pw-one-77aa", "key-of-version-two-1f3e", "pw-two-52bb")


def test_cli_for_reviewers(
    config: RatchetConfig,
    tiny_classifiers: dict[str, Path],
    reports: Callable,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(cli_options.console, "width", 200)  # a wide terminal: no truncated cells
    no_floor = config.gate.model_copy(update={"min_accuracy": 0})
    config = config.model_copy(update={"gate": no_floor})
    publish(with_secrets(config, *SECRETS[:2]), tiny_classifiers["shuffled"], reports("shuffled"))
    publish(with_secrets(config, *SECRETS[2:]), tiny_classifiers["good"], reports("good"))
    # Versions registered before redaction existed recorded the config in plain text.
    old_style = yaml.safe_load(config.to_yaml())
    old_style["serving"]["api_key"] = "key-recorded-in-plain-text-by-an-old-version"
    old_style["tracking"]["mlflow_uri"] = "http://bob:old-plain-pw@mlflow:5000"
    first = MlflowClient().get_model_version(config.registry.model_name, "1")
    tracking.log_text(
        registry.evaluation_run_id(first), yaml.safe_dump(old_style), registry.LINEAGE_CONFIG
    )

    listed = json.loads(run_cli("registry", "list", "--json"))
    assert [(row["version"], row["aliases"]) for row in listed] == [
        ("2", ["challenger", "champion"]),
        ("1", ["previous-champion"]),
    ]
    table = run_cli("registry", "list")
    assert "previous-champion" in table and "bbbb.dir" in table
    card = run_cli("registry", "show", "2")
    assert "ratchet-sst2 — version 2" in card and "PROMOTED" in card
    compared = json.loads(run_cli("registry", "compare", "1", "2", "--json"))
    assert compared["significance"]["b_minus_a_accuracy"] > 0.2
    assert compared["significance"]["significant"]
    rendered = run_cli("registry", "compare", "1", "2")
    assert "McNemar p=" in rendered and "true \\ predicted" in rendered
    for shown in (rendered, json.dumps(compared)):
        for secret in (*SECRETS, "key-recorded-in-plain-text", "old-plain-pw", "bob"):
            assert secret not in shown
    config_diff = {row["key"]: (row["a"], row["b"]) for row in compared["config_diff"]}
    assert "serving.api_key" not in config_diff  # both set, both shown as ***
    assert config_diff["tracking.dvc_remote_url"] == (None, "https://***@dvc.example.com/store")
    assert config_diff["tracking.mlflow_uri"] == ("http://***@mlflow:5000", None)

    rolled = json.loads(run_cli("registry", "rollback", "--reason", "canary", "--json"))
    assert rolled == {"demoted": "2", "champion": "1"}
    result = CliRunner().invoke(
        get_app(), ["registry", "rollback", "--params", str(PROJECT_ROOT / "params.yaml")]
    )
    assert result.exit_code == 5
    assert "no 'previous-champion' alias" in result.output

    # Version 2 clears the gate again (the test profile's: 80 test examples), so a manual
    # promotion needs no --force.
    smoke = str(PROJECT_ROOT / "configs" / "smoke.yaml")
    promoted = json.loads(
        run_cli(
            "registry",
            "promote",
            "2",
            "--reason",
            "re-promote",
            "--by",
            "cy",
            "--json",
            "--config",
            smoke,
        )
    )
    assert promoted["outcome"] == "promoted" and not promoted["forced"]
    assert current_aliases(config)["champion"] == "2"
