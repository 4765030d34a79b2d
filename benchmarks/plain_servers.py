"""The two plain servers ``serve_load.py`` compares the Bentos with, one process each.

    python benchmarks/plain_servers.py alternative --model-dir DIR --port 8001 --threads 2
    python benchmarks/plain_servers.py baseline --model-dir DIR --port 8002 --threads 2
    python benchmarks/plain_servers.py ceiling --model-dir DIR --port 8003 --threads 2 \
        --runtime onnx-int8 --in-flight 2

``ceiling``: the leanest Python server around a Bento's own model and runtime (a bare ASGI
app on uvicorn, no framework, no middleware, no inference log; greedy batches, ``--in-flight``
of them at once, scored by ``serving.predict.predict_texts`` as the Bento scores them): how
close any Python HTTP server gets to the in-process limit on this machine.
``alternative``: what a user would build instead of a Bento, FastAPI + uvicorn around a
Hugging Face ``pipeline`` that batches the requests queued while the model ran (greedy
batching, no length sorting). ``baseline``: a plain ``http.server`` calling the pipeline
once per request, strictly one request at a time (kept for continuity with earlier runs).
Both answer ``POST /classify`` with ``{"texts": [...]}`` and ``GET /`` when ready.
"""

from __future__ import annotations

import argparse
import asyncio
import json
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Any


def pipeline_classifier(model_dir: str, threads: int) -> Any:
    import torch
    from transformers import pipeline

    torch.set_num_threads(threads)
    return pipeline("text-classification", model=model_dir, tokenizer=model_dir, top_k=None)


def run_baseline_server(model_dir: str, port: int, threads: int) -> None:
    """A plain http.server: one request at a time, a HF pipeline call per request."""
    classify = pipeline_classifier(model_dir, threads)

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
            length = int(self.headers.get("content-length", 0))
            texts = json.loads(self.rfile.read(length))["texts"]
            body = json.dumps({"predictions": classify(texts, truncation=True)}).encode()
            self.send_response(200)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:  # noqa: N802
            self.send_response(200)
            self.send_header("content-length", "0")
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    class Server(HTTPServer):
        request_queue_size = 128  # queue clients rather than refuse them: slow, not broken

    Server(("127.0.0.1", port), Handler).serve_forever()


def run_alternative_server(model_dir: str, port: int, threads: int, max_batch: int) -> None:
    """FastAPI + uvicorn around a HF pipeline, batching what queued while the model ran."""
    import uvicorn
    from fastapi import FastAPI

    classify = pipeline_classifier(model_dir, threads)
    queue: asyncio.Queue[tuple[list[str], asyncio.Future[Any]]] = asyncio.Queue()

    async def batcher() -> None:
        while True:
            jobs = [await queue.get()]
            while not queue.empty() and sum(len(texts) for texts, _ in jobs) < max_batch:
                jobs.append(queue.get_nowait())
            texts = [text for job_texts, _ in jobs for text in job_texts]
            try:
                rows = await asyncio.to_thread(
                    classify, texts, truncation=True, batch_size=len(texts)
                )
            except Exception as error:  # noqa: BLE001 (hand the failure to every waiter)
                for _, future in jobs:
                    future.set_exception(error)
                continue
            start = 0
            for job_texts, future in jobs:
                future.set_result(rows[start : start + len(job_texts)])
                start += len(job_texts)

    async def lifespan(_: FastAPI) -> Any:
        task = asyncio.create_task(batcher())
        yield
        task.cancel()

    app = FastAPI(lifespan=lifespan)

    @app.post("/classify")
    async def post(body: dict[str, list[str]]) -> dict[str, Any]:
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        await queue.put((body["texts"], future))
        return {"predictions": await future}

    @app.get("/")
    async def alive() -> dict[str, str]:
        return {}

    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning")


def run_ceiling_server(  # noqa: C901 (one small ASGI app, kept in one place)
    model_dir: str, port: int, threads: int, max_batch: int, runtime: str, in_flight: int
) -> None:
    """A bare ASGI app around the Bento's classifier: greedy batches, no framework."""
    import sys
    from pathlib import Path

    import uvicorn

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from serving.predict import configure_threads, load_classifier, predict_texts

    classifier = load_classifier(model_dir, "fp32", runtime=runtime, threads=threads)
    if runtime == "torch":
        configure_threads(threads)
    predict_texts(classifier, ["warm up"])
    queue: asyncio.Queue[tuple[list[str], asyncio.Future[Any]]] = asyncio.Queue()

    async def score(jobs: list[tuple[list[str], asyncio.Future[Any]]], slot: Any) -> None:
        try:
            texts = [text for job_texts, _ in jobs for text in job_texts]
            rows = await asyncio.to_thread(predict_texts, classifier, texts)
            start = 0
            for job_texts, future in jobs:
                future.set_result(rows[start : start + len(job_texts)])
                start += len(job_texts)
        finally:
            slot.release()

    async def batcher() -> None:
        slot = asyncio.Semaphore(in_flight)
        while True:
            jobs = [await queue.get()]
            await slot.acquire()
            while not queue.empty() and sum(len(texts) for texts, _ in jobs) < max_batch:
                jobs.append(queue.get_nowait())
            asyncio.get_running_loop().create_task(score(jobs, slot))

    async def app(scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                asyncio.get_running_loop().create_task(batcher())
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        body, more = b"", True
        while more:
            message = await receive()
            body, more = body + message.get("body", b""), message.get("more_body", False)
        answer = b"{}"
        if scope["method"] == "POST":
            future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
            await queue.put((json.loads(body)["texts"], future))
            answer = json.dumps({"predictions": await future}).encode()
        headers = [(b"content-type", b"application/json")]
        headers.append((b"content-length", str(len(answer)).encode()))
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": answer})

    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("kind", choices=["alternative", "baseline", "ceiling"])
    parser.add_argument("--model-dir", required=True, help="a Hugging Face model folder")
    parser.add_argument("--port", type=int, required=True, help="loopback port")
    parser.add_argument("--threads", type=int, required=True, help="torch threads")
    parser.add_argument("--max-batch", type=int, default=64, help="most texts a batch")
    parser.add_argument("--runtime", default="torch", help="ceiling: serving.runtime")
    parser.add_argument("--in-flight", type=int, default=1, help="ceiling: batches at once")
    options = parser.parse_args()
    if options.kind == "ceiling":
        run_ceiling_server(
            options.model_dir,
            options.port,
            options.threads,
            options.max_batch,
            options.runtime,
            options.in_flight,
        )
    elif options.kind == "baseline":
        run_baseline_server(options.model_dir, options.port, options.threads)
    else:
        run_alternative_server(options.model_dir, options.port, options.threads, options.max_batch)


if __name__ == "__main__":
    main()
