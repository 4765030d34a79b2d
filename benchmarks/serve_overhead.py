"""Per-request CPU of a Bento's HTTP stack, without the model and without sockets.

    .venv/bin/python benchmarks/serve_overhead.py --bento TAG
    .venv/bin/python benchmarks/serve_overhead.py --bento TAG --requests 5000

Each variant runs in its own process: the Bento's service is loaded as ``bentoml serve``
loads it (same arguments, BentoML configuration, middleware and inference log), its model
is replaced by canned answers, and single-text ``POST /classify`` requests are sent one
after another straight into its ASGI app. The CPU time per request is then what the
server spends on a request besides the model: BentoML's middleware (request metrics,
tracing, access log, timeout), Ratchet's (API key, body checks), the route, the response
and the inference log, with the Bento's own settings (``serving.access_log``,
``serving.request_metrics``, ``serving.trace_requests``). Variants: BentoML's own API path
against the direct one (``serving/fast_path.py``), and BentoML's request metrics turned off
by configuration (``BENTOML_CONFIG_OPTIONS``). The Bento's own settings win over that
configuration: build one with ``--set serving.access_log=true`` or
``--set serving.trace_requests=true`` to see what those cost. CPU time is measured, so the
figures are steadier than a load test's requests/s; the variants run in alternating order,
``--rounds`` times, and the median is printed with its ratio to the default.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

PROJECT_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT_ROOT))

SERVICE = "ratchet_classifier"
VARIANTS: dict[str, str] = {
    "default": "",
    "bentoml-api-path": "",  # the direct route unregistered: BentoML's API plumbing
    "no-request-metrics": f"services.{SERVICE}.metrics.enabled=false",
}
BODY = json.dumps({"texts": ["a gripping, beautifully acted film"]}).encode()


def load_app(bento_tag: str) -> Any:
    """The Bento's ASGI app, loaded as BentoML's worker loads it."""
    import bentoml
    from _bentoml_impl.loader import load
    from bentoml._internal.log import configure_server_logging
    from bentoml._internal.utils.args import set_arguments

    info = bentoml.get(bento_tag).info
    set_arguments(dict(info.args or {}))
    configure_server_logging()
    service = load(bento_tag, standalone_load=True)
    return service.to_asgi(is_main=True)


async def start(app: Any) -> None:
    """Run the app's startup (the service is instantiated, its model loaded)."""
    messages = [{"type": "lifespan.startup"}]
    started = asyncio.Event()

    async def receive() -> dict:
        if messages:
            return messages.pop()
        await asyncio.Event().wait()  # shutdown is never asked for
        return {}

    async def send(message: dict) -> None:
        if message["type"].startswith("lifespan.startup"):
            started.set()

    asyncio.get_running_loop().create_task(app({"type": "lifespan"}, receive, send))
    await started.wait()


def canned_model(direct: bool) -> None:
    """Replace the served model by canned answers (and unregister the direct route when
    measuring BentoML's own API path)."""
    from serving.fast_path import DIRECT_ROUTES

    route = DIRECT_ROUTES["/classify"]
    service: Any = route.answer.__self__  # type: ignore[attr-defined]
    row = {
        "label": "positive",
        "score": 0.99,
        "probabilities": {"negative": 0.01, "positive": 0.99},
        "truncated": False,
    }

    async def answers(texts: list[str]) -> list[dict]:
        return [row for _ in texts]

    service.batcher = answers
    if not direct:
        del DIRECT_ROUTES["/classify"]


async def post(app: Any) -> int:
    """One ``POST /classify`` through the whole ASGI app; returns its status."""
    status = 0
    delivered = False

    async def receive() -> dict:
        nonlocal delivered
        if delivered:
            await asyncio.sleep(3600)
        delivered = True
        return {"type": "http.request", "body": BODY, "more_body": False}

    async def send(message: dict) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/classify",
        "raw_path": b"/classify",
        "root_path": "",
        "query_string": b"",
        "headers": [
            (b"host", b"127.0.0.1"),
            (b"content-type", b"application/json"),
            (b"content-length", str(len(BODY)).encode()),
        ],
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 3000),
    }
    await app(scope, receive, send)
    return status


async def measure(bento_tag: str, variant: str, requests: int) -> float:
    """Microseconds of CPU per request for one variant, in this process."""
    app = load_app(bento_tag)
    await start(app)
    canned_model(direct=variant != "bentoml-api-path")
    for _ in range(200):  # warm up
        assert await post(app) == 200
    begin = time.process_time()
    for _ in range(requests):
        await post(app)
    await asyncio.sleep(0.5)  # the inference log writes what came meanwhile
    return (time.process_time() - begin) / requests * 1e6


def run_variant(bento_tag: str, variant: str, requests: int) -> float:
    """One variant in a fresh process (BentoML reads its configuration once)."""
    env = {**os.environ, "BENTOML_DO_NOT_TRACK": "true", "TOKENIZERS_PARALLELISM": "false"}
    if VARIANTS[variant]:
        env["BENTOML_CONFIG_OPTIONS"] = VARIANTS[variant]
    command = [sys.executable, __file__, "--bento", bento_tag, "--requests", str(requests)]
    command += ["--variant", variant]
    out = subprocess.run(command, env=env, capture_output=True, text=True, cwd=PROJECT_ROOT)
    if out.returncode:
        raise SystemExit(f"{variant} failed: {out.stderr[-2000:]}")
    return float(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--bento", required=True, help="a built classifier Bento's tag")
    parser.add_argument("--requests", type=int, default=3000, help="requests per variant")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds")
    parser.add_argument("--variant", choices=sorted(VARIANTS), help=argparse.SUPPRESS)
    options = parser.parse_args()
    if options.variant:
        print(asyncio.run(measure(options.bento, options.variant, options.requests)))
        return
    from components.state import ProjectPaths

    os.environ.setdefault("BENTOML_HOME", str(ProjectPaths.discover(PROJECT_ROOT).bentoml_home))
    seen: dict[str, list[float]] = {variant: [] for variant in VARIANTS}
    for round_index in range(options.rounds):
        for variant in VARIANTS:
            seen[variant].append(run_variant(options.bento, variant, options.requests))
            print(f"round {round_index} {variant:<20} {seen[variant][-1]:7.1f} us", flush=True)
    default = statistics.median(seen["default"])
    print(
        f"\nCPU per single-text request besides the model ({options.requests} requests, "
        f"median of {options.rounds}; {os.cpu_count()} cores):"
    )
    for variant, values in seen.items():
        median = statistics.median(values)
        print(f"  {variant:<20} {median:7.1f} us   x{median / default:.2f} of default")


if __name__ == "__main__":
    main()
