"""`ratchet retrain` for a token classifier (NER) end to end on a tiny model: real Prefect,
DVC and MLflow. One retrain for the whole module (a CoNLL-format slice of toy sentences,
a model trained a few steps: below gate.min_entity_f1, so rejected and no Bento needed);
the gate's I/O against champions then reuses its registered model with recorded tags.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import yaml
from mlflow import MlflowClient
from typer.testing import CliRunner

from tests.data.test_token_validate import toy_sentences
from tests.flows.conftest import flow_overrides, git, make_project

pytestmark = [pytest.mark.integration, pytest.mark.slow]

MODEL = "ratchet-conll"
PROMOTED = "ratchet-conll-fitted"
TAGS = ["O", "B-LOC", "I-LOC", "B-PER", "I-PER"]


def write_conll(path: Path, rows: list[dict[str, Any]]) -> None:
    """CoNLL-2003 layout: a -DOCSTART- line, then ``token TAG`` lines, blank between sentences."""
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = ["-DOCSTART- O", ""]
    for row in rows:
        lines += [f"{token} {tag}" for token, tag in zip(row["tokens"], row["tags"], strict=True)]
        lines.append("")
    path.write_text("\n".join(lines), encoding="utf-8")


def token_project(root: Path) -> Path:
    """A flow project whose params.yaml holds conll.yaml's data settings (DVC reads them
    there) for a toy CoNLL folder: 60 train, 15 valid, 30 test sentences."""
    source = root / "conll"
    write_conll(source / "train.txt", toy_sentences(60, 0))
    write_conll(source / "valid.txt", toy_sentences(15, 60))
    write_conll(source / "test.txt", toy_sentences(30, 75))
    project = make_project(root / "project", source)
    params = yaml.safe_load((project / "params.yaml").read_text())
    conll = yaml.safe_load((project / "configs" / "conll.yaml").read_text())
    params["data"].update(conll["data"], source=str(source))
    params["data"]["checks"].update(max_test_overlap=0)
    params["gate"]["metric"] = "entity_f1"
    params["registry"]["model_name"] = MODEL
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    git(project, "-c", "user.email=t@example.com", "-c", "user.name=t", "commit", "-qam", "ner")
    return project


@pytest.fixture(scope="module")
def token_run(tiny_bert_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    """The module's one retrain, with its own state folder and MLflow store."""
    from prefect.testing.utilities import prefect_test_harness

    from flows.retrain import retrain

    root = tmp_path_factory.mktemp("token-flow")
    home = root / "state"
    home.mkdir()
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("RATCHET_HOME", str(home))
        patch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{home / 'mlflow.db'}")
        project = token_project(root)
        # Two steps at a tiny rate: far below gate.min_entity_f1 (3 steps at the smoke
        # profile's rate reach 0.43 on these sentences).
        untrained = {"train.max_steps": "2", "train.lr": "1e-5", "pretrain.enabled": "false"}
        overrides = flow_overrides(tiny_bert_dir, **untrained)
        # The same data under another registered name, trained enough to pass the gate
        # (40 steps at 3e-3 fit these sentences): promoted, so its tagger Bento is built
        # and checked before the alias moves.
        fitted = {"train.max_steps": "40", "train.lr": "3e-3", "pretrain.enabled": "false"}
        promoting = [*flow_overrides(tiny_bert_dir, **fitted), f"registry.model_name={PROMOTED}"]
        with prefect_test_harness(server_startup_timeout=120):
            summary = retrain(params=str(project / "params.yaml"), overrides=overrides)
            promoted = retrain(params=str(project / "params.yaml"), overrides=promoting)
        yield {
            "project": project,
            "summary": summary,
            "promoted": promoted,
            "state": home,
            "overrides": overrides,
        }


def test_retrain_registers_a_token_version_and_the_floor_rejects_it(token_run: dict) -> None:
    from components import registry

    summary = token_run["summary"]
    assert summary["outcome"] == "rejected"
    assert "is below the floor 0.5000 (gate.min_entity_f1)" in summary["reason"]
    assert "the all-O tagger scores entity F1 0" in summary["reason"]
    assert set(summary["truncation"]) == {
        "data.truncated_fraction_train",
        "data.truncated_fraction_test",
    }
    client = MlflowClient()
    assert registry.aliases(client, MODEL) == {"challenger": "1"}  # no champion, no Bento
    version = registry.get_version(client, MODEL, "1")
    tags = version.tags
    assert tags["task"] == "token-classification"
    assert json.loads(tags["labels"]) == TAGS
    assert tags["metric.f1"] == tags["metric.entity_f1"]
    assert tags["gate.decision"] == "rejected" and tags["gate.metric"] == "entity_f1"
    assert "### Per entity type" in version.description
    assert "| PER |" in version.description and "| LOC |" in version.description
    metrics = MlflowClient().get_run(tags["eval_run_id"]).data.metrics
    assert {"entity_f1", "entity_f1.PER", "entity_recall.LOC", "token_accuracy"} <= set(metrics)
    listed = {item.path for item in client.list_artifacts(tags["eval_run_id"], "evaluation")}
    assert {"evaluation/entity_confusion.png", "evaluation/predictions.jsonl"} <= listed


def test_a_promoted_token_classifier_gets_a_checked_tagger_bento(token_run: dict) -> None:
    import bentoml

    from components import registry
    from components.state import ProjectPaths
    from serving.build import bentoml_home, use_bentoml_home
    from serving.tasks import SERVICES, TOKEN_TASK

    summary = token_run["promoted"]
    assert summary["outcome"] == "promoted", summary.get("reason")
    assert registry.aliases(MlflowClient(), PROMOTED)["champion"] == "1"
    tags = MlflowClient().get_model_version(PROMOTED, "1").tags
    assert float(tags["metric.entity_f1"]) >= 0.5
    paths = ProjectPaths.discover(token_run["project"])
    with use_bentoml_home(bentoml_home(paths)):
        bento = bentoml.bentos.get(summary["bento"])
    assert bento.info.labels["registry.name"] == PROMOTED
    assert bento.info.labels["registry.version"] == "1"
    assert bento.info.entry_service == "ratchet_tagger"
    assert SERVICES[TOKEN_TASK].startswith("serving.token_service")


def test_registry_list_json_rows_of_a_token_classifier_carry_f1(token_run: dict) -> None:
    from cli.main import get_app

    params = str(token_run["project"] / "params.yaml")
    result = CliRunner().invoke(get_app(), ["registry", "list", "--json", "--params", params])
    assert result.exit_code == 0, result.output
    (row,) = json.loads(result.stdout)
    tags = MlflowClient().get_model_version(MODEL, "1").tags
    assert row["task"] == "token-classification"
    assert row["f1"] == pytest.approx(float(tags["metric.entity_f1"]))
    assert row["entity_recall"] == pytest.approx(float(tags["metric.entity_recall"]))


def test_registry_compare_refuses_token_versions_with_a_clear_error(token_run: dict) -> None:
    from components.errors import RegistryError
    from components.registry_reports import compare_versions

    with pytest.raises(RegistryError, match="ratchet-conll v1 is a token classifier"):
        compare_versions(MODEL, "1", "1")


def test_the_registered_model_loads_as_a_folder_and_as_pyfunc(
    token_run: dict, tmp_path: Path
) -> None:
    import mlflow
    from transformers import AutoModelForTokenClassification

    from components import registry

    folder = registry.download_version(MlflowClient(), MODEL, "1", tmp_path)
    model = AutoModelForTokenClassification.from_pretrained(folder)
    assert model.config.id2label == dict(enumerate(TAGS))
    tagged = mlflow.pyfunc.load_model(f"models:/{MODEL}/1").predict(
        pd.DataFrame({"text": ["Anna Smith flew to Paris.", ""]})
    )
    assert tagged["words"].tolist() == [["Anna", "Smith", "flew", "to", "Paris", "."], []]
    assert len(tagged["tags"][0]) == 6 and set(tagged["tags"][0]) <= set(TAGS)
    assert list(tagged["tags"][1]) == []


def register_report(token_run: dict, report: Any, out: Path) -> str:
    """Register ``report`` as a new version of the flow's model (its recorded tags are
    what the gate compares when the test split matches)."""
    from components import registry, tracking
    from components.config import load_config
    from components.state import ProjectPaths
    from components.token_evaluate import EVAL_FILE, write_token_report_files

    project = token_run["project"]
    config = load_config(project / "params.yaml", [], token_run["overrides"])
    tracking.setup_tracking(config, ProjectPaths.discover(project))
    out.mkdir(parents=True)
    report.artifacts = write_token_report_files(
        pd.DataFrame({"tokens": report.tokens}), report.predicted, report, 5, out
    )
    (out / EVAL_FILE).write_text(json.dumps(report.summary()), encoding="utf-8")
    report.artifacts[EVAL_FILE] = out / EVAL_FILE
    source = MlflowClient().get_model_version(MODEL, "1").source
    with tracking.parent_run(config, "test-gate"), tracking.stage_run("evaluate") as run:
        version = registry.register_challenger(MODEL, source, report, {}, config, run.info.run_id)
    return str(version.version)


def test_the_gate_rejects_a_shuffled_tag_model_against_the_champion(
    token_run: dict, tmp_path: Path
) -> None:
    from components import registry
    from components.config import load_config
    from components.errors import GateRejected
    from components.promotion import apply_gate, promote_manually
    from components.token_promotion import load_token_evaluation

    client = MlflowClient()
    gate = load_config(token_run["project"] / "params.yaml", [], token_run["overrides"]).gate
    flow_report = load_token_evaluation(client, MODEL, "1")
    assert flow_report.tokens and len(flow_report.gold) == 30

    perfect = replace(flow_report, predicted=flow_report.gold, behaviour=[])
    version = register_report(token_run, perfect, tmp_path / "perfect")
    decision = apply_gate(MODEL, version, perfect, gate)
    assert decision.promote, decision.reason
    assert registry.aliases(client, MODEL)["champion"] == version

    rng = random.Random(0)
    shuffled_tags = [rng.sample(tags, len(tags)) for tags in flow_report.gold]
    shuffled = replace(flow_report, predicted=shuffled_tags, behaviour=[])
    challenger = register_report(token_run, shuffled, tmp_path / "shuffled")
    decision = apply_gate(MODEL, challenger, shuffled, gate)
    assert not decision.promote and not decision.champion_rescored
    assert decision.comparison is not None and decision.comparison.upper_bound < 0
    assert f"below the champion v{version}'s 1.0000 (tolerance {gate.tolerance})" in (
        decision.reason
    )
    assert decision.best_champion_version == version
    assert registry.aliases(client, MODEL)["champion"] == version
    tags = registry.version_tags(client, MODEL, challenger)
    assert tags["gate.decision"] == "rejected" and tags["task"] == "token-classification"
    # A reviewer's promotion re-gates the version from its logged evaluation.
    with pytest.raises(GateRejected, match=f"below the champion v{version}'s 1.0000"):
        promote_manually(MODEL, challenger, gate, "try it")

    # Another test split: the champion is downloaded and re-scored on its sentences.
    other_split = replace(
        flow_report,
        gold=flow_report.gold[:-1],
        predicted=flow_report.gold[:-1],
        tokens=flow_report.tokens[:-1],
        test_split_md5="other-split",
        behaviour=[],
    )
    third = register_report(token_run, other_split, tmp_path / "other")
    decision = apply_gate(MODEL, third, other_split, gate)
    assert decision.champion_rescored
    assert f"champion v{version} re-scored on the challenger's 29 test sentences" in (
        decision.rescore_note
    )
