"""The load generator of ``serve_load.py``: a lean keep-alive HTTP/1.1 client on asyncio.

The client shares the machine's cores with the server it measures (loopback only), so
every millisecond of CPU it spends per request is one the server cannot use. httpx took
about 1.7-2 ms of CPU per request at concurrency 32 on the 2-core development machine,
as much as a third of what the served int8 model needs; this client writes a prepared
request and reads the status line, the headers and exactly ``Content-Length`` bytes (or
the chunks) of the answer, a few tenths of a millisecond. ``--client httpx`` keeps the
former driver for comparison.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import httpx

REQUEST_TIMEOUT_S = 60


@dataclass
class Outcome:
    """What one driver saw: latencies of the answered requests, failures and time."""

    latencies_ms: list[float] = field(default_factory=list)
    errors: int = 0
    seconds: float = 0.0


class KeepAliveConnection:
    """One HTTP/1.1 connection that POSTs JSON and reads whole answers; reopens when the
    server closes it."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def post(self, request: bytes) -> int:
        """Send a prepared request; returns the answer's status once its body is read."""
        if self.writer is None or self.reader is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        self.writer.write(request)
        head = await self.reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ", 2)[1])
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip().lower()
        if headers.get("transfer-encoding") == "chunked":
            await self.read_chunks()
        else:
            await self.reader.readexactly(int(headers.get("content-length", "0")))
        # HTTP/1.0 (http.server's default) closes after each answer unless told otherwise.
        keep_alive = "keep-alive" if lines[0].startswith("HTTP/1.1") else "close"
        if headers.get("connection", keep_alive) == "close":
            await self.close()
        return status

    async def read_chunks(self) -> None:
        assert self.reader is not None
        while True:
            size = int((await self.reader.readuntil(b"\r\n")).split(b";")[0], 16)
            await self.reader.readexactly(size + 2)  # the chunk and its CRLF
            if size == 0:
                return

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            with contextlib.suppress(OSError):
                await self.writer.wait_closed()
        self.reader = self.writer = None


def json_post(url: str, payload: object) -> bytes:
    """The bytes of ``POST url`` with a JSON body, keep-alive."""
    parts = urlsplit(url)
    body = json.dumps(payload).encode()
    head = (
        f"POST {parts.path or '/'} HTTP/1.1\r\nHost: {parts.netloc}\r\n"
        "Content-Type: application/json\r\nAccept: */*\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    return head.encode("latin-1") + body


async def drive_lean(url: str, sentences: list[str], concurrency: int) -> Outcome:
    """Send each sentence once as ``{"texts": [sentence]}``, ``concurrency`` connections
    each with one request in flight; a status other than 200 or a broken connection is an
    error (the connection is then reopened)."""
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    requests = [json_post(url, {"texts": [sentence]}) for sentence in sentences]
    pending = iter(requests)
    outcome = Outcome()

    async def connection_loop() -> None:
        connection = KeepAliveConnection(host, port)
        try:
            for request in pending:
                started = time.perf_counter()
                try:
                    async with asyncio.timeout(REQUEST_TIMEOUT_S):
                        ok = await connection.post(request) == 200
                except (OSError, asyncio.IncompleteReadError, ValueError):  # TimeoutError too
                    ok = False
                    await connection.close()
                if ok:
                    outcome.latencies_ms.append((time.perf_counter() - started) * 1000)
                else:
                    outcome.errors += 1
        finally:
            await connection.close()

    started = time.perf_counter()
    await asyncio.gather(*(connection_loop() for _ in range(concurrency)))
    outcome.seconds = time.perf_counter() - started
    return outcome


async def drive_httpx(url: str, sentences: list[str], concurrency: int) -> Outcome:
    """The same load through an ``httpx.AsyncClient`` (the driver of earlier runs)."""
    pending = iter(sentences)
    outcome = Outcome()
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(timeout=REQUEST_TIMEOUT_S, limits=limits) as client:

        async def worker() -> None:
            for sentence in pending:
                started = time.perf_counter()
                try:
                    response = await client.post(url, json={"texts": [sentence]})
                    ok = response.status_code == 200
                except httpx.HTTPError:
                    ok = False
                if ok:
                    outcome.latencies_ms.append((time.perf_counter() - started) * 1000)
                else:
                    outcome.errors += 1

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        outcome.seconds = time.perf_counter() - started
    return outcome


DRIVERS = {"lean": drive_lean, "httpx": drive_httpx}
