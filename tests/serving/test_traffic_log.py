"""The served Bento records every /classify call in its inference log and takes feedback."""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pandas as pd
import pytest
import yaml

from components.config import load_config
from components.feedback_data import feedback_lineage
from components.prepare import load_prepared, run_prepare
from components.state import ProjectPaths
from components.text_features import EMBEDDING_DIMS, text_hash
from components.traffic import read_traffic
from tests.conftest import make_sentiment_rows
from tests.flows.conftest import make_project, write_tsv
from tests.serving.conftest import BuiltBento, RunningServer, run_ratchet, start_server, stop_server

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@dataclasses.dataclass(frozen=True)
class MonitoredServer:
    server: RunningServer
    state: Path
    env: dict[str, str]


def wait_for_rows(log_dir: Path, count: int, timeout_s: float = 60) -> list[dict]:
    """The logged rows, once at least ``count`` are written (the writer is asynchronous)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        frame = read_traffic(log_dir, since=0)
        if len(frame) >= count:
            return list(frame.to_dict("records"))
        time.sleep(0.3)
    raise AssertionError(f"{count} rows not logged in {timeout_s}s under {log_dir}")


@pytest.fixture(scope="module")
def monitored(
    built_bento: BuiltBento, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[MonitoredServer]:
    """The session Bento served with its own state folder (its own log and feedback)."""
    state = tmp_path_factory.mktemp("monitored-state")
    bento = dataclasses.replace(built_bento, env={**built_bento.env, "RATCHET_HOME": str(state)})
    running = start_server(bento)
    yield MonitoredServer(server=running, state=state, env=bento.env)
    stop_server(running.process)


def test_every_classified_text_is_logged_without_its_text(monitored: MonitoredServer) -> None:
    texts = ["the movie was wonderful number 7", "THE PLOT WAS AWFUL, ÇA VA?"]
    answer = httpx.post(f"{monitored.server.url}/classify", json={"texts": texts}, timeout=30)
    assert answer.status_code == 200, answer.text
    rows = wait_for_rows(monitored.state / "traffic", 2)
    by_hash = {row["hash"]: row for row in rows}
    first, second = by_hash[text_hash(texts[0])], by_hash[text_hash(texts[1])]
    predictions = answer.json()["predictions"]
    assert first["label"] == predictions[0]["label"]
    assert first["confidence"] == pytest.approx(predictions[0]["score"])
    assert first["version"] == answer.json()["model"]["version"]
    assert first["request"] == second["request"]
    assert (first["length"], second["length"]) == (len(texts[0]), len(texts[1]))
    assert first["uppercase_share"] == 0 and second["uppercase_share"] == 1
    assert second["ascii_letter_share"] == pytest.approx(18 / 26)  # Ç is a letter, not ASCII
    assert len(first["embedding"]) == EMBEDDING_DIMS
    assert "text" not in first  # serving.log_texts is off by default
    log_text = "".join(path.read_text() for path in (monitored.state / "traffic").rglob("*.log*"))
    assert texts[0] not in log_text


def test_feedback_is_stored_and_a_foreign_label_refused(monitored: MonitoredServer) -> None:
    url = f"{monitored.server.url}/feedback"
    stored = httpx.post(url, json={"text": "a dull plot", "label": "negative"}, timeout=30)
    assert stored.status_code == 200, stored.text
    assert stored.json() == {"stored": True, "hash": text_hash("a dull plot")}
    refused = httpx.post(url, json={"text": "a dull plot", "label": "meh"}, timeout=30)
    assert refused.status_code == 400
    assert "'meh' is not one of the model's labels ['negative', 'positive']" in refused.text
    blank = httpx.post(url, json={"text": " ", "label": "negative"}, timeout=30)
    assert blank.status_code == 400
    lone_surrogate = '{"text": "\\ud800 odd", "label": "negative"}'  # valid JSON, not UTF-8
    headers = {"content-type": "application/json"}
    surrogate = httpx.post(url, content=lone_surrogate, headers=headers, timeout=30)
    assert surrogate.status_code == 400
    assert "Invalid JSON" in surrogate.text  # refused before any code here runs
    schema = httpx.get(f"{monitored.server.url}/docs.json", timeout=30).json()["components"]
    assert schema["schemas"]["feedback__Input"]["properties"]["label"]["enum"] == [
        "negative",
        "positive",
    ]
    lines = (monitored.state / "feedback" / "feedback.jsonl").read_text().splitlines()
    stored_pairs = [(record["text"], record["label"]) for record in map(json.loads, lines)]
    assert ("a dull plot", "negative") in stored_pairs
    assert all(label in {"negative", "positive"} for _, label in stored_pairs)


def export_feedback_cli(project: Path, env: dict[str, str]) -> dict:
    params = str(project / "params.yaml")
    result = run_ratchet("feedback", "export", "--json", "--params", params, env=env, cwd=project)
    assert result.returncode == 0, result.stderr[-3000:]
    return dict(json.loads(result.stdout.strip().splitlines()[-1]))


def test_feedback_round_trip_posted_exported_versioned_trained_on(
    monitored: MonitoredServer, tmp_path: Path
) -> None:
    """POST /feedback -> `ratchet feedback export` (validated, `dvc add`) -> prepare puts
    it in train; a text equal to a test text never gets there."""
    source = tmp_path / "source"
    rows = make_sentiment_rows(200, seed=3)
    pairs = list(zip(rows["sentence"], rows["label"], strict=True))
    write_tsv(source / "train.tsv", pairs[:160])
    write_tsv(source / "dev.tsv", pairs[160:])  # SST-2 layout: dev becomes the test split
    project = make_project(tmp_path / "project", source)
    leaking_text = pairs[170][0]
    url = f"{monitored.server.url}/feedback"
    for text, label in [("an utterly charming comedy", "positive"), (leaking_text, "negative")]:
        assert httpx.post(url, json={"text": text, "label": label}, timeout=30).status_code == 200
    env = {**monitored.env, "PREFECT_API_URL": ""}
    first = export_feedback_cli(project, env)
    assert first["dropped_leaking"] == 1 and first["event"] is None
    exported = pd.read_json(project / "data" / "feedback" / "feedback.jsonl", lines=True)
    assert "an utterly charming comedy" in set(exported["text"])
    assert leaking_text not in set(exported["text"])
    assert (
        first["md5"]
        == yaml.safe_load((project / "data" / "feedback.dvc").read_text())["outs"][0]["md5"]
    )

    httpx.post(url, json={"text": "a clumsy, tiresome sequel", "label": "negative"}, timeout=30)
    second = export_feedback_cli(project, env)
    assert second["rows"] == first["rows"] + 1 and second["md5"] != first["md5"]

    config = load_config(project / "params.yaml")
    paths = ProjectPaths(project_root=project, state_dir=monitored.state)
    manifest = run_prepare(str(source), config.data, paths)
    prepared = load_prepared(paths.prepared_dir)
    assert manifest["feedback_rows"] == second["rows"]
    trained_on = set(prepared.train["text"])
    assert {"an utterly charming comedy", "a clumsy, tiresome sequel"} <= trained_on
    for split in (prepared.validation, prepared.test):
        assert "an utterly charming comedy" not in set(split["text"])
    assert (prepared.test["text"] == leaking_text).sum() == 1
    assert leaking_text not in trained_on
    assert feedback_lineage(project) == {
        "feedback_rows": second["rows"],
        "feedback_data_md5": second["md5"],
    }


def test_requests_answered_just_before_a_stop_are_logged(
    built_bento: BuiltBento, tmp_path: Path
) -> None:
    """The writer wakes every 0.25 s; stopping the server flushes what it still holds."""
    state = tmp_path / "state"
    state.mkdir()
    bento = dataclasses.replace(built_bento, env={**built_bento.env, "RATCHET_HOME": str(state)})
    running = start_server(bento)
    try:
        for index in range(5):
            answer = httpx.post(
                f"{running.url}/classify", json={"texts": [f"fine film {index}"]}, timeout=30
            )
            assert answer.status_code == 200, answer.text
    finally:
        stop_server(running.process)
    assert len(read_traffic(state / "traffic", since=0)) == 5
