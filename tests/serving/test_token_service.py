"""The tagger Bento served on loopback: entities with character offsets, the request
contract of /classify (limits, 4xx, API key), batching, OpenAPI, and a classifier Bento
serving at the same time from the same state folder.

One tagger server (started with an API key) and one classifier server for this module.
"""

from __future__ import annotations

import concurrent.futures
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml

from tests.serving.conftest import (
    LINEAGE_TAGS,
    TAGGER_NAME,
    TAGGER_TAGS,
    BuiltBento,
    RunningServer,
    start_server,
    stop_server,
)
from tests.serving.test_service import BAD_REQUESTS, JSON_HEADERS, scored_batches

pytestmark = [pytest.mark.integration, pytest.mark.slow]

API_KEY = "tagger-key-0b7e1d"
KEY = {"X-API-Key": API_KEY}
UNICODE_TEXT = "Zoë Ñúñez visited São Paulo."


@pytest.fixture(scope="module")
def tagger_server(built_tagger: BuiltBento) -> Iterator[RunningServer]:
    running = start_server(built_tagger, api_key=API_KEY)
    yield running
    stop_server(running.process)


@pytest.fixture(scope="module")
def client(tagger_server: RunningServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=tagger_server.url, timeout=60, headers=KEY) as http:
        yield http


def entities(client: httpx.Client, texts: list[str]) -> dict:
    response = client.post("/entities", json={"texts": texts})
    assert response.status_code == 200, response.text
    return response.json()


def test_entities_have_labels_scores_and_offsets_into_the_raw_text(
    client: httpx.Client, built_tagger: BuiltBento
) -> None:
    from components.token_inference import load_tagger, predict_entities

    texts = [UNICODE_TEXT, "Farid Smith flew to Quito.", "In Zürich, Greta Tanaka met friends."]

    body = entities(client, texts)

    assert body["model"] == {
        "name": TAGGER_NAME,
        "version": built_tagger.registry_version,
        "data_md5": LINEAGE_TAGS["prepared_data_md5"],
    }
    served = body["predictions"]
    assert [(e["label"], e["text"], e["start"], e["end"]) for e in served[0]["entities"]] == [
        ("PER", "Zoë Ñúñez", 0, 9),
        ("LOC", "São Paulo", 18, 27),
    ]
    assert [set(row) for row in served] == [{"entities", "windows"}] * 3
    assert set(served[0]["entities"][0]) == {"label", "text", "start", "end", "score"}
    assert all(0.5 < e["score"] <= 1 for row in served for e in row["entities"])
    for text, row in zip(texts, served, strict=True):
        assert all(text[e["start"] : e["end"]] == e["text"] for e in row["entities"])
    assert [(e["label"], e["text"]) for e in served[1]["entities"]] == [
        ("PER", "Farid Smith"),  # far ##id: the word's label is its first sub-token's
        ("LOC", "Quito"),  # quit ##o, and the full stop stays outside
    ]
    # The served model answers as the registered one does in-process (fp32).
    expected = predict_entities(load_tagger(built_tagger.model_dir), texts)
    for row, wanted in zip(served, expected, strict=True):
        assert [(e["label"], e["start"], e["end"]) for e in row["entities"]] == [
            (e["label"], e["start"], e["end"]) for e in wanted["entities"]
        ]
        assert [e["score"] for e in row["entities"]] == pytest.approx(
            [e["score"] for e in wanted["entities"]], abs=1e-4
        )


def test_a_text_longer_than_the_token_window_is_tagged_to_its_end(client: httpx.Client) -> None:
    long_text = ("Farid Smith flew to Quito. " * 30).strip()  # 210 sub-tokens, window 128

    body = entities(client, [long_text, UNICODE_TEXT])

    assert [row["windows"] for row in body["predictions"]] == [2, 1]
    found = body["predictions"][0]["entities"]
    assert len(found) == 60
    assert (found[-1]["label"], found[-1]["start"], found[-1]["end"]) == ("LOC", 803, 808)


@pytest.mark.parametrize("case", list(BAD_REQUESTS), ids=list(BAD_REQUESTS))
def test_bad_request_gets_the_classifier_s_4xx(client: httpx.Client, case: str) -> None:
    payload, status, mention = BAD_REQUESTS[case]

    response = client.post("/entities", content=payload, headers=JSON_HEADERS)

    assert response.status_code == status, response.text
    assert mention in response.text
    assert response.headers["content-type"].startswith("application/json")
    assert entities(client, [UNICODE_TEXT])["predictions"][0]["entities"]  # still serving


def test_the_api_key_guards_entities_and_metadata(tagger_server: RunningServer) -> None:
    url = tagger_server.url
    body = {"texts": [UNICODE_TEXT]}
    for method, path in [("POST", "/entities"), ("GET", "/metadata"), ("GET", "/docs.json")]:
        missing = httpx.request(method, f"{url}{path}", json=body, timeout=30)
        wrong = httpx.request(method, f"{url}{path}", json=body, headers={"X-API-Key": "x"})
        assert missing.status_code == 401, path
        assert missing.json() == {"error": "missing API key", "field": "X-API-Key"}
        assert wrong.status_code == 401, path
        assert wrong.json() == {"error": "wrong API key", "field": "X-API-Key"}
    assert httpx.get(f"{url}/healthz", timeout=30).status_code == 200


def test_metadata_lists_the_tag_set_and_the_torch_fallback(
    client: httpx.Client, built_tagger: BuiltBento
) -> None:
    metadata = client.get("/metadata").json()

    assert metadata["labels"] == TAGGER_TAGS
    assert metadata["runtime"] == "torch"
    assert metadata["lineage"]["task"] == "token-classification"
    assert metadata["metrics"]["f1"] > 0.5
    name, version = built_tagger.tag.split(":")
    bento_dir = Path(built_tagger.env["BENTOML_HOME"]) / "bentos" / name / version
    bento_yaml = yaml.safe_load((bento_dir / "bento.yaml").read_text())
    assert bento_yaml["service"] == "serving.token_service:RatchetTagger"
    assert bento_yaml["args"]["runtime"] == "torch"  # serving.runtime is onnx-int8
    assert bento_yaml["labels"]["runtime.fallback"].startswith("serving.runtime onnx-int8 is")


def test_concurrent_requests_share_forward_passes(client: httpx.Client) -> None:
    names = ["Farid Smith", "Zoë Ñúñez", "Greta Tanaka", "Anna Okafor"]
    texts = [f"{names[i % 4]} flew to Quito number {i}." for i in range(32)]
    before = scored_batches(client)
    with concurrent.futures.ThreadPoolExecutor(max_workers=16) as pool:
        bodies = list(pool.map(lambda text: entities(client, [text]), texts))
    after = scored_batches(client)

    # Each request got its own text's entities back.
    for index, body in enumerate(bodies):
        found = body["predictions"][0]["entities"]
        assert found[0]["text"] == names[index % 4], (index, found)
    assert after["requests"] - before["requests"] == 32
    batches = after["batches"] - before["batches"]
    assert 1 <= batches < 32  # some forward pass served several requests
    assert after["single"] - before["single"] < batches


def test_openapi_states_the_entities_schema_and_limits(client: httpx.Client) -> None:
    spec = client.get("/docs.json").json()
    schemas = spec["components"]["schemas"]

    operation = spec["paths"]["/entities"]["post"]
    request = operation["requestBody"]["content"]["application/json"]["schema"]
    assert request["required"] == ["texts"]
    texts = request["properties"]["texts"]
    assert (texts["minItems"], texts["maxItems"]) == (1, 64)
    assert (texts["items"]["minLength"], texts["items"]["maxLength"]) == (1, 10_000)
    assert texts["items"]["pattern"] == "\\S"
    answer = operation["responses"]["200"]["content"]["application/json"]["schema"]
    assert answer["required"] == ["model", "predictions"]
    assert answer["properties"]["model"] == {"$ref": "#/components/schemas/ServedModel"}
    assert answer["properties"]["predictions"]["items"] == {
        "$ref": "#/components/schemas/TextEntities"
    }
    assert schemas["TextEntities"]["properties"]["entities"]["items"] == {
        "$ref": "#/components/schemas/Entity"
    }
    assert set(schemas["Entity"]["properties"]) == {"label", "text", "start", "end", "score"}
    assert schemas["Entity"]["properties"]["start"] == {
        "type": "integer",
        "minimum": 0,
        "title": "Start",
        "description": "Offset of its first character (code points).",
    }
    assert schemas["Entity"]["required"] == ["label", "text", "start", "end", "score"]
    assert set(schemas["TextEntities"]["properties"]) == {"entities", "windows"}
    assert "/classify" not in spec["paths"]


def test_a_classifier_and_a_tagger_serve_at_once(
    client: httpx.Client, built_bento: BuiltBento
) -> None:
    classifier = start_server(built_bento)
    try:
        classified = httpx.post(
            f"{classifier.url}/classify", json={"texts": ["the movie was wonderful"]}, timeout=60
        )
        tagged = entities(client, [UNICODE_TEXT])
    finally:
        stop_server(classifier.process)

    assert classified.status_code == 200, classified.text
    assert classified.json()["model"]["name"] == "ratchet-sst2"
    assert [e["text"] for e in tagged["predictions"][0]["entities"]] == ["Zoë Ñúñez", "São Paulo"]
