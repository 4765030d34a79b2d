"""The inference routes' direct path: ``POST /classify`` and ``POST /entities`` answered
without BentoML's per-request plumbing, with BentoML's own validation and answers.

BentoML runs each API call through its request context, IO-model parsing, serde, response
object, background tasks and Starlette's routing: on the 2-core machine that was 0.6-0.9 ms
of event-loop time per single-text request, as much as a third of what the int8 model needs
per text, and the source of 250-300 ms p99 stalls at concurrency 32 (docs/serving.md). A
service registers its inference route here once its model is loaded; this middleware, the
innermost of the service's ASGI middleware (after the API key and body checks), then

- validates the body with the API's own input model (BentoML's ``input_spec``, built
  from the method's typed signature), so it accepts exactly what the API accepts;
- hands anything it does not accept (a validation error, another method) to BentoML
  unchanged, so every 4xx answer stays BentoML's;
- awaits the same ``answer`` coroutine as the ``@bentoml.api`` method, and writes the same
  response model as JSON, with BentoML's ``Server`` and ``X-BentoML-Request-ID`` headers
  and its error answers (503 and 500 bodies) when the answer fails.

BentoML's outer middleware still sees every request: request metrics, tracing, access log
and the request timeout. The OpenAPI spec and BentoML's clients still describe and call the
``@bentoml.api`` methods, whose code path is unchanged.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ValidationError

from serving.middleware import ASGIApp, Receive, Scope, Send, replay_body

logger = logging.getLogger(__name__)
UNEXPECTED_ERROR = "An unexpected error has occurred, please check the server log."


@dataclass(frozen=True)
class DirectRoute:
    """One inference route: its input model, the answer for its texts, its server name."""

    input_spec: type[BaseModel]
    answer: Callable[[list[str]], Awaitable[BaseModel]]
    service_name: str


# path -> route, filled by each service's ``__init__`` in the worker that serves it.
DIRECT_ROUTES: dict[str, DirectRoute] = {}


def register_direct_route(
    service: Any, api_name: str, answer: Callable[[list[str]], Awaitable[BaseModel]]
) -> None:
    """Answer ``POST /<api_name>`` directly with ``answer`` (the API's own coroutine)."""
    DIRECT_ROUTES[f"/{api_name}"] = DirectRoute(
        input_spec=service.apis[api_name].input_spec,
        answer=answer,
        service_name=service.name,
    )


async def read_body(receive: Receive) -> bytes | None:
    """The whole request body; None when the client went away."""
    chunks = []
    more = True
    while more:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        chunks.append(message.get("body", b""))
        more = message.get("more_body", False)
    return b"".join(chunks)


def error_answer(error: Exception) -> tuple[int, Any]:
    """Status and body of BentoML's answer to an API that raised ``error``
    (``ServiceAppFactory.api_endpoint_wrapper`` in BentoML 1.4.39)."""
    from bentoml.exceptions import BentoMLException

    if not isinstance(error, BentoMLException):
        return 500, {"error": UNEXPECTED_ERROR}
    status = int(error.error_code.value)
    if status in (401, 403):
        return status, {"error": "Authorization error"}
    if status >= 500:
        return status, {"error": UNEXPECTED_ERROR}
    return status, [{"error": str(error)}]


def response_headers(service_name: str, body: bytes) -> list[tuple[bytes, bytes]]:
    """JSON content headers plus the ones BentoML adds to every API answer."""
    from bentoml._internal.context import trace_context

    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        (b"server", f"BentoML Service/{service_name}".encode()),
    ]
    if trace_context.request_id is not None:
        headers.append((b"x-bentoml-request-id", format(trace_context.request_id, "016x").encode()))
    return headers


class DirectRouteMiddleware:
    """Answer the registered inference routes directly (see the module docstring)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        route = None
        if scope["type"] == "http" and scope.get("method") == "POST":
            route = DIRECT_ROUTES.get(scope.get("path", ""))
        if route is None:
            await self.app(scope, receive, send)
            return
        body = await read_body(receive)
        if body is None:
            return
        try:
            request = route.input_spec.model_validate_json(body or b"{}")
        except ValidationError:  # BentoML answers it, naming the field, as always
            await self.app(scope, replay_body(body, receive), send)
            return
        status = 200
        try:
            answer = await route.answer(list(request.texts))  # type: ignore[attr-defined]
            payload = answer.model_dump_json().encode()
        except Exception as error:  # noqa: BLE001 (answered as BentoML would)
            logger.exception("%s failed", scope.get("path"))
            status, content = error_answer(error)
            payload = json.dumps(content, separators=(",", ":")).encode()  # as Starlette's
        headers = response_headers(route.service_name, payload)
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": payload})
