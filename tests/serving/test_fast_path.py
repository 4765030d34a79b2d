"""The inference routes' direct path (serving/fast_path.py) and the pipelined batcher
(serving/contract.py), in-process: what each answers, and what it hands to BentoML."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from pathlib import Path
from typing import Annotated, Any

import anyio
import pytest
from bentoml.exceptions import InvalidArgument, ServiceUnavailable
from pydantic import BaseModel, Field

from serving.fast_path import DIRECT_ROUTES, DirectRoute, DirectRouteMiddleware, error_answer

PATH = "/classify"
GENERIC = {"error": "An unexpected error has occurred, please check the server log."}


class Request(BaseModel):
    texts: Annotated[list[Annotated[str, Field(min_length=1)]], Field(min_length=1)]


class Answer(BaseModel):
    upper: list[str]


class Downstream:
    """Stands for BentoML's app: records what reached it, answers 418."""

    def __init__(self) -> None:
        self.bodies: list[bytes] = []

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        message = await receive()
        self.bodies.append(message.get("body", b""))
        await send({"type": "http.response.start", "status": 418, "headers": []})
        await send({"type": "http.response.body", "body": b"bentoml"})


def call(
    middleware: DirectRouteMiddleware, body: bytes, method: str = "POST", path: str = PATH
) -> tuple[int, dict[bytes, bytes], bytes]:
    """One request through the middleware, in two body chunks; (status, headers, body)."""
    incoming = [
        {"type": "http.request", "body": body[:3], "more_body": True},
        {"type": "http.request", "body": body[3:], "more_body": False},
    ]
    sent: list[dict] = []

    async def receive() -> dict:
        return incoming.pop(0) if incoming else {"type": "http.disconnect"}

    async def send(message: dict) -> None:
        sent.append(message)

    scope = {"type": "http", "method": method, "path": path, "headers": []}
    asyncio.run(middleware(scope, receive, send))
    start, answer = sent
    return start["status"], dict(start["headers"]), answer["body"]


@pytest.fixture
def route(monkeypatch: pytest.MonkeyPatch) -> list[list[str]]:
    """A registered route whose answer upper-cases the texts (and fails on "overload",
    "bad" and "crash"); returns the texts each answer was given."""
    seen: list[list[str]] = []

    async def answer(texts: list[str]) -> Answer:
        seen.append(texts)
        if texts == ["overload"]:
            raise ServiceUnavailable("overloaded: the batch queue exceeds max_latency_ms")
        if texts == ["bad"]:
            raise InvalidArgument("not that one")
        if texts == ["crash"]:
            raise RuntimeError("boom")
        return Answer(upper=[text.upper() for text in texts])

    monkeypatch.setitem(DIRECT_ROUTES, PATH, DirectRoute(Request, answer, "ratchet_classifier"))
    return seen


def test_a_valid_request_is_answered_directly(route: list[list[str]]) -> None:
    downstream = Downstream()
    status, headers, body = call(DirectRouteMiddleware(downstream), b'{"texts": ["a", "b"]}')

    assert status == 200
    assert json.loads(body) == {"upper": ["A", "B"]}
    assert route == [["a", "b"]]
    assert downstream.bodies == []  # BentoML's API plumbing was skipped
    assert headers[b"content-type"] == b"application/json"
    assert headers[b"content-length"] == str(len(body)).encode()
    assert headers[b"server"] == b"BentoML Service/ratchet_classifier"


@pytest.mark.parametrize(
    "body",
    [b'{"texts": []}', b'{"texts": [""]}', b'{"text": ["a"]}', b"{}", b'{"texts": "a"}'],
)
def test_what_the_api_would_refuse_goes_to_bentoml_unchanged(
    route: list[list[str]], body: bytes
) -> None:
    downstream = Downstream()
    status, _, answer = call(DirectRouteMiddleware(downstream), body)

    assert (status, answer) == (418, b"bentoml")  # BentoML answers it (400, naming the field)
    assert downstream.bodies == [body]  # the whole body, as the client sent it
    assert route == []


@pytest.mark.parametrize(
    ("method", "path"), [("GET", PATH), ("POST", "/feedback"), ("POST", "/classify/x")]
)
def test_other_methods_and_paths_go_to_bentoml(
    route: list[list[str]], method: str, path: str
) -> None:
    downstream = Downstream()
    status, _, _ = call(DirectRouteMiddleware(downstream), b'{"texts": ["a"]}', method, path)

    assert status == 418
    assert route == []


@pytest.mark.parametrize(
    ("text", "status", "content"),
    [
        (
            "overload",
            503,
            {"error": "An unexpected error has occurred, please check the server log."},
        ),
        ("bad", 400, [{"error": "not that one"}]),
        ("crash", 500, GENERIC),
    ],
)
def test_a_failed_answer_gets_bentomls_error_answer(
    route: list[list[str]], text: str, status: int, content: Any
) -> None:
    answered, headers, body = call(
        DirectRouteMiddleware(Downstream()), json.dumps({"texts": [text]}).encode()
    )

    assert (answered, json.loads(body)) == (status, content)
    assert headers[b"server"] == b"BentoML Service/ratchet_classifier"


def test_error_answers_follow_bentomls_mapping() -> None:
    from bentoml.exceptions import BentoMLException

    class Forbidden(BentoMLException):
        from http import HTTPStatus

        error_code = HTTPStatus.FORBIDDEN

    assert error_answer(Forbidden("no")) == (403, {"error": "Authorization error"})
    assert error_answer(ValueError("x"))[0] == 500


def overlapping_batches(batches_in_flight: int) -> tuple[int, dict[int, list[str]]]:
    """Most forward passes of a TextBatcher running at once, under 12 concurrent
    requests, and each request's answers."""
    from serving.contract import TextBatcher

    running, most = 0, 0
    lock = threading.Lock()

    def predict(texts: list[str]) -> list[str]:
        nonlocal running, most
        with lock:
            running += 1
            most = max(most, running)
        time.sleep(0.15)
        with lock:
            running -= 1
        return [text.upper() for text in texts]

    batcher = TextBatcher(predict, batches_in_flight=batches_in_flight)
    answers: dict[int, list[str]] = {}

    async def request(index: int) -> None:
        await anyio.sleep(0.01 * index)  # a stream of requests, not one burst
        answers[index] = await batcher([f"t{index}"])

    async def twelve() -> None:
        async with anyio.create_task_group() as group:
            for index in range(12):
                group.start_soon(request, index)

    anyio.run(twelve)
    return most, answers


@pytest.mark.parametrize("batches_in_flight", [1, 2])
def test_batches_in_flight_bounds_the_passes_running_at_once(batches_in_flight: int) -> None:
    most, answers = overlapping_batches(batches_in_flight)

    assert answers == {index: [f"T{index}"] for index in range(12)}
    assert most == batches_in_flight


def test_the_inference_log_writes_in_blocks_without_monitor_warnings(
    tiny_bert_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """record() only queues; the writer writes whatever came meanwhile, everything
    recorded before close() is in the log, and bentoml.monitor's column warnings (one per
    value of a first block) do not flood the server log."""
    from components.traffic import read_traffic
    from serving.traffic_log import TrafficLog, TrafficSettings

    log = TrafficLog(TrafficSettings(log_dir=str(tmp_path / "traffic")), tiny_bert_dir, "m", "7")
    row = {"label": "positive", "score": 0.9}
    with caplog.at_level("WARNING"):
        for index in range(40):
            log.record([f"text {index}", f"other {index}"], [row, row])
        log.close()

    frame = read_traffic(tmp_path / "traffic", since=0)
    assert len(frame) == 80
    assert frame["request"].nunique() == 40  # one id per request, shared by its texts
    assert set(frame["version"]) == {"7"}
    assert not [r for r in caplog.records if "duplicated" in r.getMessage()]


def test_the_loaded_service_is_frozen_out_of_full_collections() -> None:
    """freeze_startup_objects (called once a service's model is loaded) moves what is
    alive into the permanent generation, so a full collection no longer walks it."""
    import gc

    from serving.contract import freeze_startup_objects

    held = [[index] for index in range(10_000)]  # stands for the loaded model's objects
    try:
        freeze_startup_objects()
        assert gc.get_freeze_count() >= len(held)
        oldest = {id(item) for item in gc.get_objects(2)}  # what a full collection walks
        assert not any(id(item) in oldest for item in held)
    finally:
        gc.unfreeze()
