"""The built Bento served on loopback: predictions, metadata, limits, errors, auth, OpenAPI.

One server without auth (the session Bento) and one with an API key (the same model
re-built with ``serving.api_key`` set, so it requires a key), each started once for this
module.
"""

from __future__ import annotations

import concurrent.futures
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml

from tests.conftest import PROJECT_ROOT
from tests.serving.conftest import (
    LINEAGE_TAGS,
    MODEL_NAME,
    RATCHET,
    STARTUP_TIMEOUT_S,
    BuiltBento,
    RunningServer,
    free_port,
    start_server,
    stop_server,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]

API_KEY = "s3cret-key-4c9a1f0e7b"
POSITIVE = "the movie was wonderful number 7"
NEGATIVE = "the plot was awful number 8"
JSON_HEADERS = {"content-type": "application/json"}


@pytest.fixture(scope="module")
def server(built_bento: BuiltBento) -> Iterator[RunningServer]:
    running = start_server(built_bento)
    yield running
    stop_server(running.process)


@pytest.fixture(scope="module")
def client(server: RunningServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=30) as http:
        yield http


def classify(client: httpx.Client, texts: list[str]) -> dict:
    response = client.post("/classify", json={"texts": texts})
    assert response.status_code == 200, response.text
    return response.json()


def assert_still_serving(client: httpx.Client) -> None:
    assert client.get("/healthz").status_code == 200
    assert classify(client, [POSITIVE])["predictions"][0]["label"] == "positive"


def test_classify_returns_labels_probabilities_and_model(
    client: httpx.Client, built_bento: BuiltBento
) -> None:
    body = classify(client, [POSITIVE, NEGATIVE])

    assert [p["label"] for p in body["predictions"]] == ["positive", "negative"]
    for prediction in body["predictions"]:
        assert set(prediction["probabilities"]) == {"negative", "positive"}
        assert sum(prediction["probabilities"].values()) == pytest.approx(1.0, abs=1e-5)
        assert prediction["score"] == max(prediction["probabilities"].values())
        assert prediction["score"] > 0.5
        assert prediction["truncated"] is False
    assert body["model"] == {
        "name": MODEL_NAME,
        "version": built_bento.registry_version,
        "data_md5": LINEAGE_TAGS["prepared_data_md5"],
    }


def test_documented_example_input_is_served(client: httpx.Client, built_bento: BuiltBento) -> None:
    from components.evaluate import score_texts
    from serving.service import EXAMPLE_INPUT

    body = classify(client, EXAMPLE_INPUT["texts"])

    # The served model answers as the same model scored in-process (fp32, deterministic).
    expected = score_texts(built_bento.model_dir, EXAMPLE_INPUT["texts"])
    labels = ["negative", "positive"]
    assert [p["label"] for p in body["predictions"]] == [labels[i] for i in expected.argmax(1)]
    for prediction, row in zip(body["predictions"], expected, strict=True):
        served = [prediction["probabilities"][label] for label in labels]
        assert served == pytest.approx(row.tolist(), abs=1e-4)


def test_text_beyond_token_window_is_truncated_and_flagged(client: httpx.Client) -> None:
    long_text = "the acting was brilliant " * 200  # ~5,000 chars: within max_chars, > 128 tokens

    body = classify(client, [long_text, POSITIVE])

    assert [p["truncated"] for p in body["predictions"]] == [True, False]


def test_concurrent_requests_get_their_own_answers(client: httpx.Client) -> None:
    texts = [POSITIVE if i % 2 else NEGATIVE for i in range(24)]
    with concurrent.futures.ThreadPoolExecutor(max_workers=12) as pool:
        bodies = list(pool.map(lambda text: classify(client, [text]), texts))

    labels = [body["predictions"][0]["label"] for body in bodies]
    assert labels == ["positive" if i % 2 else "negative" for i in range(24)]


BATCH_SIZE_METRIC = "ratchet_batch_requests"


def scored_batches(client: httpx.Client) -> dict[str, float]:
    """The requests-per-forward-pass histogram in /metrics: forward passes, requests they
    served, and passes that served a single request (the ``le="1.0"`` bucket)."""
    seen = {"batches": 0.0, "requests": 0.0, "single": 0.0}
    for line in client.get("/metrics").text.splitlines():
        if not line.startswith(BATCH_SIZE_METRIC):
            continue
        value = float(line.rsplit(" ", 1)[1])
        if line.startswith(f"{BATCH_SIZE_METRIC}_count"):
            seen["batches"] += value
        elif line.startswith(f"{BATCH_SIZE_METRIC}_sum"):
            seen["requests"] += value
        elif line.startswith(f"{BATCH_SIZE_METRIC}_bucket") and 'le="1.0"' in line:
            seen["single"] += value
    return seen


def test_concurrent_requests_share_batches(client: httpx.Client) -> None:
    before = scored_batches(client)
    texts = [f"{POSITIVE if i % 2 else NEGATIVE} {i}" for i in range(48)]
    with concurrent.futures.ThreadPoolExecutor(max_workers=24) as pool:
        bodies = list(pool.map(lambda text: classify(client, [text]), texts))
    after = scored_batches(client)

    assert [len(body["predictions"]) for body in bodies] == [1] * 48
    assert after["requests"] - before["requests"] == 48  # every request was counted
    batches = after["batches"] - before["batches"]
    assert 1 <= batches < 48  # some batch held the texts of several requests
    assert after["single"] - before["single"] < batches


def test_metadata_names_version_aliases_metrics_and_lineage(
    client: httpx.Client, built_bento: BuiltBento, secured_server: RunningServer
) -> None:
    response = client.get("/metadata")

    assert response.status_code == 200
    metadata = response.json()
    assert metadata["name"] == MODEL_NAME
    assert metadata["version"] == built_bento.registry_version
    assert metadata["aliases"] == ["champion"]
    assert metadata["labels"] == ["negative", "positive"]
    assert metadata["metrics"] == {"accuracy": pytest.approx(0.97), "f1_macro": 0.96}
    assert metadata["max_length"] == 128
    # Run ids, paths and git state only for a caller that gave the API key.
    assert metadata["lineage"] is None
    assert "run_id" not in response.text
    authenticated = httpx.get(
        f"{secured_server.url}/metadata", headers={"X-API-Key": API_KEY}, timeout=30
    )
    assert authenticated.status_code == 200, authenticated.text
    assert authenticated.json()["lineage"] == LINEAGE_TAGS
    assert authenticated.json()["name"] == MODEL_NAME


def test_health_ready_and_prometheus_metrics(client: httpx.Client) -> None:
    assert client.get("/healthz").status_code == 200
    assert client.get("/readyz").status_code == 200
    metrics = client.get("/metrics")
    assert metrics.status_code == 200
    assert "bentoml_service_request_total" in metrics.text


def test_bento_labels_name_registry_version_and_lineage(built_bento: BuiltBento) -> None:
    bentoml_cli = str(Path(sys.executable).with_name("bentoml"))

    def bentoml_get(output: str) -> str:
        shown = subprocess.run(
            [bentoml_cli, "get", built_bento.tag, "-o", output],
            env=built_bento.env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert shown.returncode == 0, shown.stderr
        return shown.stdout

    labels = json.loads(bentoml_get("json"))["labels"]
    name, version = built_bento.tag.split(":")
    bento_dir = Path(built_bento.env["BENTOML_HOME"]) / "bentos" / name / version
    bento_yaml = yaml.safe_load((bento_dir / "bento.yaml").read_text())
    requirements = (bento_dir / "env" / "python" / "requirements.txt").read_text().split()

    assert labels["registry.name"] == MODEL_NAME
    assert labels["registry.version"] == built_bento.registry_version
    assert labels["git_commit"] == LINEAGE_TAGS["git_commit"]
    assert labels["metric.accuracy"] == "0.97"
    assert labels["metric.f1_macro"] == "0.96"
    assert bento_yaml["args"]["model_tag"] == f"{MODEL_NAME}:v{built_bento.registry_version}"
    assert bento_yaml["args"]["max_chars"] == 10_000
    torch_pin = next(
        line.strip()
        for line in (PROJECT_ROOT / "constraints.txt").read_text().splitlines()
        if line.startswith("torch==")
    )
    assert torch_pin.split("+")[0] in requirements
    assert (bento_dir / "env" / "docker" / "Dockerfile").is_file()


BAD_REQUESTS = {
    "invalid JSON": (b'{"texts": ["unterminated', 400, "not valid JSON"),
    "missing field": (b'{"sentences": ["hi"]}', 400, "texts"),
    "texts not a list": (b'{"texts": "just a string"}', 400, "texts"),
    "text not a string": (b'{"texts": [1, 2]}', 400, "texts"),
    "empty list": (b'{"texts": []}', 400, "texts"),
    "empty text": (b'{"texts": ["fine", ""]}', 400, "texts"),
    "blank text": (b'{"texts": [" \\t\\n "]}', 400, "texts"),
    "too many texts": (json.dumps({"texts": ["ok"] * 65}).encode(), 400, "texts"),
    "text over max_chars": (json.dumps({"texts": ["x" * 10_001]}).encode(), 400, "texts"),
    "1 MB text": (
        json.dumps({"texts": ["x" * 1_000_000]}).encode(),
        413,
        "(serving.max_body_bytes)",
    ),
    "non-UTF-8 body": (b'{"texts": ["caf\xe9 \xff"]}', 400, "UTF-8"),
    "JSON array body": (b'["hi"]', 400, "object"),
}


@pytest.mark.parametrize("case", list(BAD_REQUESTS), ids=list(BAD_REQUESTS))
def test_bad_request_gets_4xx_naming_the_problem(client: httpx.Client, case: str) -> None:
    payload, status, mention = BAD_REQUESTS[case]

    response = client.post("/classify", content=payload, headers=JSON_HEADERS)

    assert response.status_code == status, response.text
    assert mention in response.text
    assert response.headers["content-type"].startswith("application/json")
    assert_still_serving(client)


def test_non_json_media_type_is_refused_with_415(client: httpx.Client) -> None:
    response = client.post(
        "/classify",
        content=b'{"texts": ["hi"]}',
        headers={"content-type": "multipart/form-data"},  # no boundary: BentoML would 500
    )

    assert response.status_code == 415
    assert response.json()["field"] == "Content-Type"
    assert_still_serving(client)


def test_openapi_spec_fuzzed_without_server_errors(server: RunningServer) -> None:
    schemathesis = str(Path(sys.executable).with_name("schemathesis"))
    result = subprocess.run(
        [
            schemathesis,
            "run",
            f"{server.url}/docs.json",
            "--checks",
            "not_a_server_error",
            "--max-examples",
            "25",
            "--request-timeout",
            "30",
            "--url",
            server.url,
        ],
        capture_output=True,
        text=True,
        timeout=150,
    )
    assert result.returncode == 0, result.stdout[-4000:]
    assert "No issues found" in result.stdout
    assert "Tested: 0" not in result.stdout


@pytest.fixture(scope="module")
def auth_bento(built_bento: BuiltBento) -> BuiltBento:
    """The session Bento's model re-built while ``serving.api_key`` was configured."""
    rebuilt = subprocess.run(
        [*RATCHET, "build", "--params", str(PROJECT_ROOT / "params.yaml")]
        + ["--set", f"serving.api_key={API_KEY}", "--set", "serving.runtime=torch"],
        env=built_bento.env,
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert rebuilt.returncode == 0, rebuilt.stderr[-3000:]
    tag = rebuilt.stdout.strip().splitlines()[-1]
    return BuiltBento(
        tag=tag,
        registry_version=built_bento.registry_version,
        env=built_bento.env,
        model_dir=built_bento.model_dir,
    )


@pytest.fixture(scope="module")
def secured_server(auth_bento: BuiltBento) -> Iterator[RunningServer]:
    running = start_server(auth_bento, api_key=API_KEY)
    yield running
    stop_server(running.process)


def files_containing(root: Path, needle: str) -> list[Path]:
    """Every file under ``root`` whose bytes contain ``needle`` (binary files included)."""
    data = needle.encode()
    return [path for path in root.rglob("*") if path.is_file() and data in path.read_bytes()]


def test_a_bento_built_with_a_key_records_auth_required_never_the_key(
    auth_bento: BuiltBento, built_bento: BuiltBento
) -> None:
    bento_yaml = Path(auth_bento.env["BENTOML_HOME"]) / "bentos" / auth_bento.tag.replace(":", "/")
    args = yaml.safe_load((bento_yaml / "bento.yaml").read_text())["args"]
    plain_dir = Path(built_bento.env["BENTOML_HOME"]) / "bentos" / built_bento.tag.replace(":", "/")

    assert args["auth_required"] is True
    assert yaml.safe_load((plain_dir / "bento.yaml").read_text())["args"]["auth_required"] is False
    # Not in any Bento, model, label or log of the BentoML home, nor the MLflow store.
    assert files_containing(Path(auth_bento.env["RATCHET_HOME"]), API_KEY) == []


def test_a_bento_that_requires_a_key_refuses_to_start_without_one(
    auth_bento: BuiltBento, tmp_path: Path
) -> None:
    """Started with `bentoml serve` (as a container or a user would) or `ratchet serve`
    with no key, or an empty one, the Bento refuses and says why."""
    env = {
        name: value
        for name, value in auth_bento.env.items()
        if name not in ("RATCHET_API_KEY", "RATCHET_API_KEY_FILE")
    }
    bentoml_cli = str(Path(sys.executable).with_name("bentoml"))
    serve = [bentoml_cli, "serve", auth_bento.tag, "--host", "127.0.0.1", "--port"]

    # In a container BentoML does not respawn a worker: the server exits.
    exited = subprocess.run(
        [*serve, str(free_port())],
        env={**env, "BENTOML_CONTAINERIZED": "true"},
        capture_output=True,
        text=True,
        timeout=STARTUP_TIMEOUT_S,
    )
    assert exited.returncode != 0
    assert "this Bento was built with serving.api_key set: start it with RATCHET_API_KEY=<key>" in (
        exited.stdout + exited.stderr
    )

    # Outside one, BentoML respawns the worker, which fails again: it never serves.
    port, log_path = free_port(), tmp_path / "serve.log"
    with log_path.open("wb") as log:
        server = subprocess.Popen(
            [*serve, str(port)],
            env={**env, "RATCHET_API_KEY": ""},
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while b"RATCHET_API_KEY is set but empty" not in log_path.read_bytes():
            assert time.monotonic() < deadline, log_path.read_text()[-3000:]
            time.sleep(0.5)
        with pytest.raises(httpx.TransportError):
            httpx.get(f"http://127.0.0.1:{port}/metadata", timeout=5)
    finally:
        stop_server(server)

    # `ratchet serve` checks before it starts anything.
    refused = subprocess.run(
        [*RATCHET, "serve", "--bento", auth_bento.tag, "--port", str(free_port())]
        + ["--params", str(PROJECT_ROOT / "params.yaml")],
        env=env,
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert refused.returncode != 0
    assert "built with serving.api_key set" in refused.stderr


def test_api_key_guards_every_endpoint_but_healthz(secured_server: RunningServer) -> None:
    url = secured_server.url
    texts = {"texts": [POSITIVE]}

    assert httpx.get(f"{url}/healthz").status_code == 200
    for method, path in [
        ("POST", "/classify"),
        ("GET", "/metadata"),
        ("GET", "/readyz"),
        ("GET", "/metrics"),
        ("GET", "/docs.json"),
    ]:
        missing = httpx.request(method, f"{url}{path}", json=texts)
        wrong = httpx.request(method, f"{url}{path}", json=texts, headers={"X-API-Key": "nope"})
        assert missing.status_code == 401, path
        assert missing.json() == {"error": "missing API key", "field": "X-API-Key"}
        assert wrong.status_code == 401, path
    good = httpx.post(f"{url}/classify", json=texts, headers={"X-API-Key": API_KEY})
    assert good.status_code == 200, good.text
    assert good.json()["predictions"][0]["label"] == "positive"


def test_rebuild_keeps_the_previous_bento_for_rollback(
    built_bento: BuiltBento, auth_bento: BuiltBento
) -> None:
    new_tag = auth_bento.tag  # the same model, re-built (with an API key configured)
    listed = subprocess.run(
        [str(Path(sys.executable).with_name("bentoml")), "list", "-o", "json"],
        env=built_bento.env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    tags = {bento["tag"] for bento in json.loads(listed.stdout)}

    assert new_tag != built_bento.tag
    assert {new_tag, built_bento.tag} <= tags
