"""Alias moves against a real MLflow store and BentoML store: one writer at a time, a re-read
before each move, the alias history, a checked Bento before each move, human review.

Reuses the registry tests' fixtures (tiny models, their evaluations, an isolated store).
"""
# ruff: noqa: F811  (the imported fixtures are parameters of the tests)

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from mlflow import MlflowClient
from typer.testing import CliRunner

from cli.main import get_app
from components import alias_history, alias_lock, aliases, registry, registry_reports
from components.config import RatchetConfig
from components.errors import AliasChanged, RegistryError, ServingError
from components.promotion import apply_gate
from components.state import ProjectPaths
from tests.conftest import PROJECT_ROOT
from tests.flows.test_deployment import prefect_server  # noqa: F401  (a fixture)
from tests.flows.test_registry import (  # noqa: F401  (fixtures)
    config,
    current_aliases,
    empty_store,
    publish,
    reports,
    run_cli,
)

pytestmark = pytest.mark.slow


def without_floor(config: RatchetConfig, **gate: object) -> RatchetConfig:
    return config.model_copy(
        update={"gate": config.gate.model_copy(update={"min_accuracy": 0, **gate})}
    )


def register_only(config: RatchetConfig, model_dir: Path, report: object) -> str:
    """Register a challenger without gating it (the retrain flow's register step)."""
    from components import tracking
    from components.mlflow_model import log_classifier_model
    from tests.flows.test_registry import LINEAGE

    with tracking.parent_run(config, run_name="test-flow"), tracking.stage_run("evaluate") as run:
        model_uri = log_classifier_model(model_dir).model_uri
        version = registry.register_challenger(
            config.registry.model_name, model_uri, report, LINEAGE, config, run.info.run_id
        )
    return str(version.version)


def test_a_rollback_between_decision_and_move_aborts_the_gate(
    config: RatchetConfig,
    tiny_classifiers: dict[str, Path],
    reports: Callable,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    config = without_floor(config)
    name = config.registry.model_name
    publish(config, tiny_classifiers["shuffled"], reports("shuffled"))
    publish(config, tiny_classifiers["good"], reports("good"))
    assert current_aliases(config)["champion"] == "2"
    challenger = register_only(config, tiny_classifiers["good"], reports("good"))

    record_decision = registry.record_decision

    def decide_then_someone_rolls_back(client: MlflowClient, model: str, version: str, d) -> None:
        record_decision(client, model, version, d)
        if version == challenger and d.promote:
            # A reviewer's rollback lands after the gate compared v3 with v2.
            aliases.rollback(name, reason="bad canary", by="ana")

    monkeypatch.setattr(registry, "record_decision", decide_then_someone_rolls_back)
    with pytest.raises(AliasChanged, match="champion changed from v2 to v1 after the decision"):
        apply_gate(name, challenger, reports("good"), config.gate)

    # The restored champion stays; v3 was never compared with it and is gated again later.
    assert current_aliases(config) == {"challenger": "3", "champion": "1"}
    tags = registry.version_tags(MlflowClient(), name, challenger)
    assert tags["gate.decision"] == "rejected"
    assert tags["gate.reason"].startswith("blocked before the alias move: ")
    assert "ratchet registry promote 3" in tags["gate.reason"]
    assert registry.gate_pending(tags)


def test_one_alias_writer_at_a_time(
    config: RatchetConfig,
    tiny_classifiers: dict[str, Path],
    reports: Callable,
    state_dir: Path,
) -> None:
    config = without_floor(config)
    name = config.registry.model_name
    publish(config, tiny_classifiers["shuffled"], reports("shuffled"))
    publish(config, tiny_classifiers["good"], reports("good"))

    finished: list[tuple[str, str]] = []
    with alias_lock.alias_lock(name, state_dir):
        with (
            pytest.raises(RegistryError, match=f"another alias move of {name} held .* 0.2 s"),
            alias_lock.alias_lock(name, state_dir, timeout_s=0.2),
        ):
            pass
        rollback = threading.Thread(
            target=lambda: finished.append(aliases.rollback(name, reason="r", by="ana"))
        )
        rollback.start()
        time.sleep(1.0)
        assert finished == [] and current_aliases(config)["champion"] == "2"  # it waits
    rollback.join(timeout=30)
    assert finished == [("2", "1")]
    assert current_aliases(config)["champion"] == "1"
    assert (state_dir / f"alias-{name}.lock").exists()


def test_every_alias_move_is_recorded_and_served_from_its_bento(
    config: RatchetConfig,
    tiny_classifiers: dict[str, Path],
    reports: Callable,
    state_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """History of gated, rollback and forced moves; each left a checked Bento, and
    `ratchet serve` picks the Bento of the version holding the alias, not the newest."""
    from cli.serving import alias_bento
    from flows.tasks import release_for
    from serving.build import bentoml_home, bentos_of_version, use_bentoml_home

    config = without_floor(config)
    name = config.registry.model_name
    paths = ProjectPaths.discover(PROJECT_ROOT)
    release = release_for(config, paths)
    for kind in ("shuffled", "good"):
        version = register_only(config, tiny_classifiers[kind], reports(kind))
        apply_gate(name, version, reports(kind), config.gate, release=release)
    aliases.rollback(name, reason="bad canary", by="ana", release=release)
    tags = {v: registry.version_tags(MlflowClient(), name, v) for v in ("1", "2")}
    assert tags["1"]["champion.held"] == tags["2"]["champion.held"] == "true"

    with use_bentoml_home(bentoml_home(paths)):
        bentos = {v: [str(b.tag) for b in bentos_of_version(name, v)] for v in ("1", "2")}
    assert len(bentos["1"]) == len(bentos["2"]) == 1  # the rollback reused v1's
    # The newest Bento is v2's, but v1 holds the alias: serve v1's.
    assert alias_bento(config, paths) == bentos["1"][0]

    monkeypatch.setattr("cli.options.console.width", 200)
    run_cli("registry", "promote", "2", "--reason", "hotfix", "--by", "bo", "--force")
    history = json.loads(run_cli("registry", "history", "--json"))
    assert [
        (m["alias"], m["from_version"], m["to_version"], m["kind"], m["by"]) for m in history
    ] == [
        ("champion", None, "1", "gated", history[0]["by"]),
        ("champion", "1", "2", "gated", history[0]["by"]),
        ("champion", "2", "1", "rollback", "ana"),
        ("champion", "1", "2", "forced", "bo"),
    ]
    # The rollback and the forced promotion found the Bentos built for the gated moves.
    assert [m["bento"] for m in history] == [*bentos["1"], *bentos["2"], *bentos["1"], *bentos["2"]]
    assert history[2]["reason"] == "bad canary" and history[3]["reason"].endswith("hotfix")
    assert [m["at"] for m in history] == sorted(m["at"] for m in history)
    client = MlflowClient()
    run_id = alias_history.history_run_id(client, name)
    assert run_id is not None
    files = client.list_artifacts(run_id, alias_history.HISTORY_DIR)
    assert len(files) == 4 and all(f.path.endswith(".json") for f in files)  # one per move
    table = run_cli("registry", "history")
    assert "rollback" in table and "bad canary" in table and "forced" in table


def test_a_challenger_waits_for_review_when_approval_is_required(
    config: RatchetConfig,
    tiny_classifiers: dict[str, Path],
    reports: Callable,
    state_dir: Path,
) -> None:
    name = config.registry.model_name
    client = MlflowClient()
    publish(without_floor(config), tiny_classifiers["shuffled"], reports("shuffled"))
    reviewed = without_floor(config, require_approval=True)

    version, decision = publish(reviewed, tiny_classifiers["good"], reports("good"))
    assert (version, decision.outcome) == ("2", "pending-review")
    assert current_aliases(config) == {"challenger": "2", "champion": "1", "pending-review": "2"}
    tags = registry.version_tags(client, name, "2")
    assert (tags["review.state"], tags["review.champion_version"]) == ("pending", "1")
    assert tags["review.gate_reason"] == decision.reason and "McNemar" in decision.reason
    assert (
        "## Review\n\n**PENDING** by the gate"
        in registry_reports.show_version(name, "2")["model_card"]
    )
    with pytest.raises(RegistryError, match="needs a reason"):
        aliases.approve(client, name, "2", " ", "ana", release=None, state_dir=state_dir)

    previous = aliases.approve(
        client, name, "2", "reviewed the slices", "ana", release=None, state_dir=state_dir
    )
    assert previous == "1"
    assert current_aliases(config) == {
        "challenger": "2",
        "champion": "2",
        "previous-champion": "1",
    }
    tags = registry.version_tags(client, name, "2")
    assert (tags["review.state"], tags["review.by"]) == ("approved", "ana")
    assert tags["review.reason"] == "reviewed the slices" and tags["champion.held"] == "true"
    card = registry_reports.show_version(name, "2")["model_card"]
    assert "## Review\n\n**APPROVED** by ana at " in card and "reviewed the slices" in card

    # v3 passes against v2 and waits; a rollback to v1 meanwhile voids that comparison.
    version, decision = publish(reviewed, tiny_classifiers["good"], reports("good"))
    assert (version, decision.outcome) == ("3", "pending-review")
    aliases.rollback(name, reason="incident", by="ana")
    params = ["--params", str(PROJECT_ROOT / "params.yaml")]
    refused = CliRunner().invoke(get_app(), ["registry", "approve", "3", "--reason", "ok", *params])
    assert refused.exit_code == 5
    assert "champion changed from v2 to v1" in refused.output
    assert "ratchet registry promote 3" in refused.output
    assert current_aliases(config)["champion"] == "1"

    rejected = json.loads(
        run_cli("registry", "reject", "3", "--reason", "re-gate first", "--by", "cy", "--json")
    )
    assert rejected == {"rejected": "3", "champion": "1"}
    assert current_aliases(config) == {"challenger": "3", "champion": "1"}
    tags = registry.version_tags(client, name, "3")
    assert (tags["review.state"], tags["review.by"], tags["gate.decision"]) == (
        "rejected",
        "cy",
        "rejected",
    )
    kinds = [(m.alias, m.kind) for m in alias_history.alias_history(client, name)]
    assert kinds == [
        ("champion", "gated"),
        ("pending-review", "review"),
        ("champion", "approved"),
        ("pending-review", "review"),
        ("champion", "rollback"),
        ("pending-review", "rejected"),
    ]


def test_a_failed_bento_leaves_the_alias_where_it_was(
    config: RatchetConfig,
    tiny_classifiers: dict[str, Path],
    reports: Callable,
) -> None:
    config = without_floor(config)
    name = config.registry.model_name
    publish(config, tiny_classifiers["shuffled"], reports("shuffled"))
    version = register_only(config, tiny_classifiers["good"], reports("good"))

    def broken_build(version: str) -> str:
        raise ServingError("building the Bento failed: no space left on device")

    with pytest.raises(ServingError, match="no space left on device"):
        apply_gate(name, version, reports("good"), config.gate, release=broken_build)
    assert current_aliases(config) == {"challenger": "2", "champion": "1"}
    tags = registry.version_tags(MlflowClient(), name, version)
    assert tags["gate.decision"] == "rejected"
    assert tags["gate.reason"].startswith(
        "blocked before the alias move: the Bento failed: building the Bento failed: no space"
    )
    assert registry.gate_pending(tags)  # the next retrain tries again
    assert [m.kind for m in alias_history.alias_history(MlflowClient(), name)] == ["gated"]


HOLD_SLOT = """
import sys, time
from pathlib import Path
from components.alias_lock import alias_lock
with alias_lock("ratchet-sst2", Path(sys.argv[1]), timeout_s=float(sys.argv[2])):
    print("held", flush=True)
    time.sleep(float(sys.argv[3]))
"""


@pytest.mark.integration
def test_machines_sharing_a_prefect_server_take_turns(
    prefect_server: dict[str, str], tmp_path: Path
) -> None:
    """Two 'machines' (separate state folders, so separate file locks) against one real
    Prefect server: the second waits on the limit `ratchet-alias-<model>` and times out."""
    import subprocess
    import sys

    env = {**prefect_server, "PYTHONPATH": str(PROJECT_ROOT)}
    first = subprocess.Popen(
        [sys.executable, "-c", HOLD_SLOT, str(tmp_path / "machine-a"), "60", "30"],
        env=env,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert first.stdout is not None and first.stdout.readline().strip() == "held"
        second = subprocess.run(
            [sys.executable, "-c", HOLD_SLOT, str(tmp_path / "machine-b"), "2", "0"],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
    finally:
        first.kill()
        first.wait()
    assert second.returncode != 0 and "held" not in second.stdout
    assert (
        "another alias move of ratchet-sst2 held the Prefect concurrency limit "
        "'ratchet-alias-ratchet-sst2' for more than 2 s" in second.stderr
    )
