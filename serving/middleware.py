"""ASGI middleware in front of the BentoML service: API-key auth and request-body checks.

Both run before BentoML parses anything, so a client's mistake is answered here with a
4xx JSON error (``{"error": ..., "field": ...}``) and never reaches the model:

- ``ApiKeyMiddleware``: when a key is configured, every path but ``/healthz`` needs the
  ``X-API-Key`` header; a missing or wrong key gets 401. The key comes from the server's
  environment (``RATCHET_API_KEY``, or a file named by ``RATCHET_API_KEY_FILE``), never
  from the Bento; an empty one is an error, not "no authentication".
- ``RequestBodyMiddleware``: a body over the size limit gets 413, a media type other than
  JSON 415, and a body that is not UTF-8 or not valid JSON 400 (BentoML would otherwise
  answer some of these, e.g. a malformed multipart form, with 500).
"""

from __future__ import annotations

import hmac
import json
import os
from collections.abc import Awaitable, Callable, Mapping, MutableMapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from components.errors import ServingError

if TYPE_CHECKING:
    from components.config import ServingConfig

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

API_KEY_HEADER = "x-api-key"
API_KEY_ENV = "RATCHET_API_KEY"
API_KEY_FILE_ENV = "RATCHET_API_KEY_FILE"
# Set in the request scope once the caller gave the right key (``/metadata`` then shows
# the full lineage).
AUTHENTICATED_SCOPE_KEY = "ratchet.authenticated"
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


def read_api_key_file(path: str | Path, setting: str) -> str:
    """The key held in a file (one line; surrounding whitespace dropped).

    Raises:
        ServingError: the file cannot be read or holds no key.
    """
    try:
        key = Path(path).read_text(encoding="utf-8").strip()
    except OSError as error:
        raise ServingError(f"{setting}={path}: cannot read the API key file ({error})") from error
    if not key:
        raise ServingError(f"{setting}={path}: the API key file is empty")
    return key


def api_key_from_environment(environ: Mapping[str, str] | None = None) -> str | None:
    """The API key the server's environment gives: ``RATCHET_API_KEY``, else the file
    named by ``RATCHET_API_KEY_FILE``; None when neither is set.

    Raises:
        ServingError: ``RATCHET_API_KEY`` is set but empty (which would otherwise turn
            authentication off), or the key file is unreadable or empty.
    """
    environ = os.environ if environ is None else environ
    if API_KEY_ENV in environ:
        key = environ[API_KEY_ENV].strip()
        if not key:
            raise ServingError(
                f"{API_KEY_ENV} is set but empty: give the key, or unset it "
                "(an empty key does not turn authentication off)"
            )
        return key
    if environ.get(API_KEY_FILE_ENV):
        return read_api_key_file(environ[API_KEY_FILE_ENV], API_KEY_FILE_ENV)
    return None


def api_key_configured(serving: ServingConfig) -> bool:
    """Whether a server started from this configuration and environment needs a key (what
    a Bento records as ``auth_required``); reads no key file.

    Raises:
        ServingError: ``RATCHET_API_KEY`` is set but empty.
    """
    if API_KEY_ENV in os.environ:
        return api_key_from_environment() is not None
    return bool(
        os.environ.get(API_KEY_FILE_ENV) or serving.api_key is not None or serving.api_key_file
    )


def configured_api_key(serving: ServingConfig, project_root: Path) -> str | None:
    """The key a server started from this configuration uses: ``RATCHET_API_KEY``, else
    ``RATCHET_API_KEY_FILE``, else ``serving.api_key``, else ``serving.api_key_file``
    (relative to the project root).

    Raises:
        ServingError: an empty ``RATCHET_API_KEY``, or a key file unreadable or empty.
    """
    key = api_key_from_environment()
    if key is not None:
        return key
    if serving.api_key is not None:
        return serving.api_key.get_secret_value()
    if serving.api_key_file:
        return read_api_key_file(project_root / serving.api_key_file, "serving.api_key_file")
    return None


def missing_key_message() -> str:
    return (
        "this Bento was built with serving.api_key set: start it with "
        f"{API_KEY_ENV}=<key> (or {API_KEY_FILE_ENV}=<file holding the key>)"
    )


class ApiKeyMiddleware:
    """Require ``X-API-Key`` on every path except ``/healthz`` (no-op without a key).

    ``api_key`` None reads the key from the environment. A server that must authenticate
    (``auth_required``) but has no usable key answers 503 on every path but ``/healthz``:
    the service's start-up check normally stops it before it serves (BentoML builds
    middleware lazily, where an exception would not stop the server), and this keeps it
    closed if it ever gets that far.
    """

    def __init__(
        self, app: ASGIApp, api_key: str | None = None, auth_required: bool = False
    ) -> None:
        self.app = app
        self.problem: str | None = None
        try:
            self.api_key = api_key or api_key_from_environment()
        except ServingError as error:
            self.api_key, self.problem = None, str(error)
        if self.api_key is None and auth_required and self.problem is None:
            self.problem = missing_key_message()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and self.problem is not None:
            if scope.get("path", "") in UNAUTHENTICATED_PATHS:
                await self.app(scope, receive, send)
                return
            await send_json_error(send, 503, f"server misconfigured: {self.problem}")
            return
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
        scope[AUTHENTICATED_SCOPE_KEY] = True
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
