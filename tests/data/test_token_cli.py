"""`ratchet ingest/validate/prepare/train/evaluate` with data.task token-classification."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from typer.testing import CliRunner

from cli.main import get_app
from tests.conftest import PROJECT_ROOT
from tests.data.test_token_validate import toy_splits


def write_conll(path: Path, rows: list[dict]) -> None:
    blocks = ["\n".join(f"{t} {g}" for t, g in zip(r["tokens"], r["tags"])) for r in rows]
    path.write_text("-DOCSTART- O\n\n" + "\n\n".join(blocks) + "\n", encoding="utf-8")


TOY_SUITE = """\
task: token-classification
labels: [LOC, PER]
checks:
  - name: mft_toy_person_and_city
    type: MFT
    capability: vocabulary
    description: The toy's pattern must give PER and LOC.
    cases:
      - text: Anna Smith flew to Paris on day7 .
        entities: [[PER, Anna Smith], [LOC, Paris]]
      - text: Ben Smith flew to Rome on day8 .
        entities: [[PER, Ben Smith], [LOC, Rome]]
"""


def test_ingest_validate_prepare_train_evaluate_a_conll_folder(
    tmp_path: Path, state_dir: Path, tiny_bert_dir: Path
) -> None:
    project = tmp_path / "project"
    (project / "configs").mkdir(parents=True)
    shutil.copy(PROJECT_ROOT / "params.yaml", project / "params.yaml")
    shutil.copy(PROJECT_ROOT / "configs" / "conll.yaml", project / "configs" / "conll.yaml")
    source = tmp_path / "ner"
    source.mkdir()
    for name, rows in zip(("train", "valid", "test"), toy_splits().values()):
        write_conll(source / f"{name}.txt", rows)
    (source / "SOURCE.md").write_text("# toy\n")
    settings = [
        "--params", str(project / "params.yaml"),
        "--config", str(PROJECT_ROOT / "configs" / "smoke.yaml"),
        "--config", str(project / "configs" / "conll.yaml"),
        "--set", f"data.source={source}",
        "--set", f"model.base={tiny_bert_dir}",
        "--set", "train.epochs=1",  # conll.yaml trains 3 epochs
    ]  # fmt: skip
    runner = CliRunner()
    for command in ("ingest", "validate", "prepare"):
        result = runner.invoke(get_app(), [*settings, command])
        assert result.exit_code == 0, result.output
    assert sorted(p.name for p in (project / "data" / "raw").iterdir()) == [
        "test.txt", "train.txt", "valid.txt"
    ]  # fmt: skip
    manifest = json.loads((project / "data" / "prepared" / "manifest.json").read_text())
    assert manifest["task"] == "token-classification"
    assert manifest["labels"] == ["O", "B-LOC", "I-LOC", "B-PER", "I-PER"]
    assert {name: split["rows"] for name, split in manifest["splits"].items()} == {
        "train": 40, "validation": 10, "test": 10
    }  # fmt: skip
    first = json.loads((project / "data" / "prepared" / "train.jsonl").read_text().splitlines()[0])
    assert first["tag_ids"] == [3, 4, 0, 0, 1, 0, 0]

    result = runner.invoke(get_app(), [*settings, "train", "--init", str(tiny_bert_dir)])
    assert result.exit_code == 0, result.output
    assert "validation entity F1 " in result.output and "after 3 steps" in result.output  # 40 rows, batch 16, 1 epoch
    result = runner.invoke(get_app(), [*settings, "evaluate", "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["test_sentences"] == 10
    assert summary["metrics"]["f1"] == summary["metrics"]["entity_f1"]
    # A NER suite for the toy's entity types runs in `ratchet evaluate` as in the flow.
    suite = tmp_path / "toy-ner.yaml"
    suite.write_text(TOY_SUITE, encoding="utf-8")
    with_suite = [*settings, "--set", f"eval.behaviour_checks={suite}"]
    result = runner.invoke(get_app(), [*with_suite, "evaluate", "--json"])
    assert result.exit_code == 0, result.output
    (check,) = json.loads(result.stdout)["behaviour"]
    assert check["name"] == "mft_toy_person_and_city" and check["cases"] == 2
    result = runner.invoke(get_app(), [*settings, "evaluate"])
    assert result.exit_code == 0, result.output
    assert "entity_f1" in result.output and "token_accuracy" in result.output
    assert (project / "metrics" / "missed_entities.csv").is_file()

    (source / "train.txt").write_text("Anna B-PER\n O\n", encoding="utf-8")
    result = runner.invoke(get_app(), [*settings, "validate"])
    assert result.exit_code == 3
    assert "train.txt line 2: a tag without a token" in " ".join(result.output.split())
