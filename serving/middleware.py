"""ASGI middleware in front of the BentoML service: API-key auth and request-body checks.

Both run before BentoML parses anything, so a client's mistake is answered here with a
4xx JSON error (``{"error": ..., "field": ...}``) and never reaches the model:

- ``ApiKeyMiddleware``: when a key is configured, every path but ``/healthz`` needs the
  ``X-API-Key`` header; a missing or wrong key gets 401.
- ``RequestBodyMiddleware``: a body over the size limit gets 413, a media type other than
  JSON 415, and a body that is not UTF-8 or not valid JSON 400 (BentoML would otherwise
  answer some of these, e.g. a malformed multipart form, with 500).
"""

from __future__ import annotations

import hmac
import json
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

API_KEY_HEADER = "x-api-key"
JSON_MEDIA_TYPE = "application/json"
UNAUTHENTICATED_PATHS = frozenset({"/healthz"})


async def send_json_error(
    send: Send, status: int, message: str, field: str | None = None, **headers: str
) -> None:
    """Answer a request with a small JSON error body."""
    payload: dict[str, Any] = {"error": message}
    if field is not None:
        payload["field"] = field
    body = json.dumps(payload).encode()
    raw_headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
    ]
    raw_headers += [(name.lower().encode(), value.encode()) for name, value in headers.items()]
    await send({"type": "http.response.start", "status": status, "headers": raw_headers})
    await send({"type": "http.response.body", "body": body})


def header_value(scope: Scope, name: str) -> str | None:
    """One request header, decoded as latin-1 (HTTP's own charset); None when absent."""
    wanted = name.lower().encode()
    for key, value in scope.get("headers", []):
        if key.lower() == wanted:
            return bytes(value).decode("latin-1")
    return None


class ApiKeyMiddleware:
    """Require ``X-API-Key`` on every path except ``/healthz`` (no-op without a key)."""

    def __init__(self, app: ASGIApp, api_key: str | None = None) -> None:
        self.app = app
        self.api_key = api_key or None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.api_key is None or scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if scope.get("path", "") in UNAUTHENTICATED_PATHS:
            await self.app(scope, receive, send)
            return
        given = header_value(scope, API_KEY_HEADER)
        if given is None:
            await send_json_error(send, 401, "missing API key", "X-API-Key")
            return
        if not hmac.compare_digest(given.encode(), self.api_key.encode()):
            await send_json_error(send, 401, "wrong API key", "X-API-Key")
            return
        await self.app(scope, receive, send)


def check_json_body(body: bytes) -> tuple[str, str] | None:
    """Why a JSON body cannot be parsed, as ``(message, field)``; None when it parses."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as error:
        return f"request body is not valid UTF-8 (byte {error.start})", "body"
    try:
        json.loads(text)
    except json.JSONDecodeError as error:
        return f"request body is not valid JSON: {error.msg} at char {error.pos}", "body"
    return None


def is_json_media_type(media_type: str) -> bool:
    media_type = media_type.strip().lower()
    return media_type == JSON_MEDIA_TYPE or media_type.endswith("+json")


class RequestBodyMiddleware:
    """Refuse oversized bodies (413), non-JSON media types (415), undecodable JSON (400)."""

    def __init__(self, app: ASGIApp, max_body_bytes: int = 1_000_000) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("method") not in {"POST", "PUT", "PATCH"}:
            await self.app(scope, receive, send)
            return
        declared = header_value(scope, "content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_body_bytes:
            await self.refuse_too_large(send)
            return
        # Read the whole body (bounded) so a chunked upload cannot slip past the limit.
        chunks: list[bytes] = []
        size = 0
        more = True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body_bytes:
                await self.refuse_too_large(send)
                return
            chunks.append(chunk)
            more = message.get("more_body", False)
        media_type = (header_value(scope, "content-type") or JSON_MEDIA_TYPE).split(";")[0]
        if not is_json_media_type(media_type):
            # Every API takes JSON; BentoML would try other parsers (multipart, pickle)
            # and answer a malformed form with a 500.
            refusal = f"unsupported Content-Type {media_type!r}; send {JSON_MEDIA_TYPE}"
            await send_json_error(send, 415, refusal, "Content-Type")
            return
        body = b"".join(chunks)
        problem = check_json_body(body)
        if problem is not None:
            await send_json_error(send, 400, problem[0], problem[1])
            return
        await self.app(scope, replay_body(body, receive), send)

    async def refuse_too_large(self, send: Send) -> None:
        await send_json_error(
            send,
            413,
            f"request body is larger than {self.max_body_bytes} bytes "
            "(serving.max_body_bytes); send fewer or shorter texts per request",
            "body",
            connection="close",
        )


def replay_body(body: bytes, receive: Receive) -> Receive:
    """A ``receive`` that hands the app the already-read body, then defers to the server."""
    delivered = False

    async def replay() -> Message:
        nonlocal delivered
        if not delivered:
            delivered = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay
