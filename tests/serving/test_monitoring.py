"""`ratchet monitor` against a served Bento on loopback: the champion's evaluation reference
(SST-2 dev sentences), then traffic from the same distribution (no drift) and from the
Brown corpus (drift); too little traffic is "not enough data", never an alarm."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pandas as pd
import pytest

from components.config import EvalConfig
from components.evaluate import PREDICTIONS_FILE, evaluate_model
from components.monitoring_reference import REFERENCE_FILE, rebuild_reference
from components.traffic import read_traffic
from tests.conftest import SHARED_DATA, require_sst2
from tests.serving.conftest import (
    MODEL_NAME,
    BuiltBento,
    RunningServer,
    run_ratchet,
    start_server,
    stop_server,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]
REFERENCE_ROWS = 400
BATCH = 20


@dataclasses.dataclass(frozen=True)
class Monitored:
    server: RunningServer
    env: dict[str, str]
    state: Path


def sst2_dev() -> pd.DataFrame:
    frame = pd.read_csv(require_sst2(SHARED_DATA / "sst2") / "dev.tsv", sep="\t")
    return frame.rename(columns={"sentence": "text"})


def brown_sentences(count: int) -> list[str]:
    lines = (SHARED_DATA / "brown_corpus" / "brown.txt").read_text(encoding="utf-8").splitlines()
    return [line for line in lines if len(line.split()) >= 5][:count]


def log_champion_evaluation(bento: BuiltBento, tmp_path: Path) -> pd.DataFrame:
    """Evaluate the champion on SST-2 dev rows and log the files monitoring reads."""
    import mlflow
    from mlflow import MlflowClient

    test = sst2_dev().head(REFERENCE_ROWS)
    report = evaluate_model(
        bento.model_dir, test, ["negative", "positive"], EvalConfig(latency_samples=1), tmp_path
    )
    mlflow.set_tracking_uri(bento.env["MLFLOW_TRACKING_URI"])
    client = MlflowClient()
    run_id = client.get_model_version(MODEL_NAME, bento.registry_version).run_id
    for name in (REFERENCE_FILE, PREDICTIONS_FILE):
        client.log_artifact(run_id, str(report.artifacts[name]), "evaluation")
    return pd.read_parquet(report.artifacts[REFERENCE_FILE])


@pytest.fixture(scope="module")
def monitored(
    built_bento: BuiltBento, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Monitored]:
    state = tmp_path_factory.mktemp("monitor-state")
    env = {**built_bento.env, "RATCHET_HOME": str(state)}
    running = start_server(dataclasses.replace(built_bento, env=env))
    yield Monitored(server=running, env=env, state=state)
    stop_server(running.process)


def send(server: RunningServer, texts: list[str]) -> None:
    with httpx.Client(base_url=server.url, timeout=60) as client:
        for start in range(0, len(texts), BATCH):
            answer = client.post("/classify", json={"texts": texts[start : start + BATCH]})
            assert answer.status_code == 200, answer.text


def wait_logged(state: Path, count: int) -> None:
    import time

    deadline = time.monotonic() + 120
    while len(read_traffic(state / "traffic", since=0)) < count:
        assert time.monotonic() < deadline, f"{count} texts not logged in 120 s"
        time.sleep(0.5)


def ratchet_monitor(monitored: Monitored, *extra: str) -> tuple[int, dict]:
    result = run_ratchet(
        "monitor", "--since", "1h", "--json", "--params", "params.yaml", *extra, env=monitored.env
    )
    assert result.stdout.strip(), result.stderr[-3000:]
    return result.returncode, json.loads(result.stdout.strip().splitlines()[-1])


def test_monitor_needs_data_then_passes_sst2_then_flags_brown(
    monitored: Monitored, built_bento: BuiltBento, tmp_path: Path
) -> None:
    reference = log_champion_evaluation(built_bento, tmp_path)
    assert len(reference) == REFERENCE_ROWS and "text" not in reference.columns
    served = sst2_dev().iloc[REFERENCE_ROWS:]["text"].tolist()

    send(monitored.server, served[:40])
    wait_logged(monitored.state, 40)
    code, summary = ratchet_monitor(monitored)
    assert (code, summary["drift"], summary["tests"]) == (3, None, {})
    assert summary["window"]["requests"] == 2 and summary["window"]["texts"] == 40
    assert summary["reason"].startswith("not enough data: 40 texts")

    send(monitored.server, served[40:260])
    wait_logged(monitored.state, 260)
    code, summary = ratchet_monitor(monitored)
    assert summary["window"]["texts"] == 260
    assert (code, summary["drift"]) == (0, False), summary
    assert all(not test["drift"] for test in summary["tests"].values())

    send(monitored.server, brown_sentences(600))
    wait_logged(monitored.state, 860)
    picture = tmp_path / "drift.png"
    code, summary = ratchet_monitor(monitored, "--plot", str(picture))
    assert picture.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (code, summary["drift"]) == (1, True), summary
    for name in ("text_length", "uppercase_share", "embedding_mmd"):
        assert summary["tests"][name]["drift"], name
        assert summary["tests"][name]["p_value"] < summary["tests"][name]["threshold"]
    assert_report_logged(built_bento)


def assert_report_logged(bento: BuiltBento) -> None:
    """The Evidently report and the summary are logged against the champion's version."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=bento.env["MLFLOW_TRACKING_URI"])
    version = client.get_model_version(MODEL_NAME, bento.registry_version)
    assert version.tags["monitor.drift"] == "true"
    run_id = version.tags["monitor.run_id"]
    listed = {item.path for item in client.list_artifacts(run_id, "monitoring")}
    assert listed == {
        "monitoring/drift_report.html",
        "monitoring/drift_summary.json",
        "monitoring/drift_report.png",
    }
    assert client.get_run(run_id).data.tags["model_version"] == bento.registry_version


def test_a_version_evaluated_before_references_gets_one_rebuilt(
    built_bento: BuiltBento, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", built_bento.env["MLFLOW_TRACKING_URI"])
    test = sst2_dev().head(50)
    report = evaluate_model(
        built_bento.model_dir,
        test,
        ["negative", "positive"],
        EvalConfig(latency_samples=1),
        tmp_path,
    )
    written = pd.read_parquet(report.artifacts[REFERENCE_FILE])
    predictions = pd.read_parquet(report.artifacts[PREDICTIONS_FILE])
    rebuilt = rebuild_reference(MODEL_NAME, built_bento.registry_version, predictions)
    pd.testing.assert_frame_equal(rebuilt, written, check_exact=False, atol=1e-5)
