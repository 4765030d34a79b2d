"""Load benchmark: the built Bento against a naive one-request-at-a-time server.

    .venv/bin/python benchmarks/serve_load.py                 # the latest `ratchet build`
    .venv/bin/python benchmarks/serve_load.py --demo-model    # no champion yet: MiniLM + fresh head

Both servers run the same model with the same torch threads on loopback, one at a time
(never both at once). The baseline is a plain ``http.server`` calling a Hugging Face
``pipeline("text-classification")`` per request, strictly one request at a time. Each is
driven by the same bounded load: N single-sentence requests from SST-2 validation at
concurrency 1, 8 and 32 with an httpx client. Prints requests/s, p50/p95/p99 latency,
errors and the Bento/baseline ratios, plus the bare model call (in-process, no HTTP).
Not a test: figures depend on the machine and on whatever else runs on it.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import httpx

PROJECT_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT_ROOT))

SST2_DEV = PROJECT_ROOT.parent / "shared" / "data" / "sst2" / "dev.tsv"
SERVING_CLI = "from cli.main import main; main()"


@dataclass
class LoadResult:
    name: str
    concurrency: int
    requests: int
    errors: int
    seconds: float
    latencies_ms: list[float]

    @property
    def rps(self) -> float:
        return (self.requests - self.errors) / self.seconds

    def percentile(self, q: float) -> float:
        ordered = sorted(self.latencies_ms)
        if not ordered:
            return float("nan")
        return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]


def sst2_sentences(limit: int) -> list[str]:
    with SST2_DEV.open(encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle, delimiter="\t", quoting=csv.QUOTE_NONE))
    return [row["sentence"] for row in rows][:limit]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# ---------------------------------------------------------------- the naive baseline
def run_baseline_server(model_dir: str, port: int, threads: int) -> None:
    """A plain http.server: one request at a time, a HF pipeline call per request."""
    import torch
    from transformers import pipeline

    torch.set_num_threads(threads)
    classify = pipeline("text-classification", model=model_dir, tokenizer=model_dir, top_k=None)

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


# ---------------------------------------------------------------- load driver
async def drive(url: str, sentences: list[str], concurrency: int, name: str) -> LoadResult:
    """Send each sentence once, ``concurrency`` requests in flight at a time."""
    queue: asyncio.Queue[str] = asyncio.Queue()
    for sentence in sentences:
        queue.put_nowait(sentence)
    latencies: list[float] = []
    errors = 0
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(timeout=60, limits=limits) as client:

        async def worker() -> None:
            nonlocal errors
            while not queue.empty():
                sentence = queue.get_nowait()
                started = time.perf_counter()
                try:
                    response = await client.post(url, json={"texts": [sentence]})
                    ok = response.status_code == 200
                except httpx.HTTPError:
                    ok = False
                if ok:
                    latencies.append((time.perf_counter() - started) * 1000)
                else:
                    errors += 1

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        seconds = time.perf_counter() - started
    return LoadResult(name, concurrency, len(sentences), errors, seconds, latencies)


def wait_ready(url: str, process: subprocess.Popen[bytes], timeout_s: float = 180) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"{url} not ready after {timeout_s}s")


def stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def run_levels(
    name: str, url: str, sentences: list[str], levels: list[int], warmup: int
) -> list[LoadResult]:
    asyncio.run(drive(url, sentences[:warmup], 4, name))  # warm up caches and the batcher
    results = []
    for concurrency in levels:
        result = asyncio.run(drive(url, sentences, concurrency, name))
        print_result(result)
        results.append(result)
    return results


def measure_server(
    name: str,
    command: list[str],
    port: int,
    ready_path: str,
    env: dict[str, str],
    sentences: list[str],
    levels: list[int],
) -> list[LoadResult]:
    """Start a server, drive it at each concurrency level, stop it."""
    process = subprocess.Popen(
        command,
        env=env,
        cwd=PROJECT_ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        wait_ready(f"http://127.0.0.1:{port}{ready_path}", process)
        return run_levels(name, f"http://127.0.0.1:{port}/classify", sentences, levels, 32)
    finally:
        stop(process)


def print_result(result: LoadResult) -> None:
    print(
        f"{result.name:<9} c={result.concurrency:<3} n={result.requests:<4} "
        f"load={os.getloadavg()[0]:4.1f}  "
        f"rps={result.rps:7.1f}  p50={result.percentile(50):7.1f} ms  "
        f"p95={result.percentile(95):7.1f} ms  p99={result.percentile(99):7.1f} ms  "
        f"errors={result.errors}",
        flush=True,
    )


# ---------------------------------------------------------------- model and Bento
def bare_model_p50_ms(model_dir: str, sentences: list[str], threads: int, precision: str) -> float:
    """p50 of one in-process predict call on one sentence: the floor for c=1."""
    from serving.predict import configure_threads, load_classifier, predict_texts

    configure_threads(threads)
    classifier = load_classifier(model_dir, precision)  # type: ignore[arg-type]
    for sentence in sentences[:10]:
        predict_texts(classifier, [sentence])
    timings = []
    for sentence in sentences[:100]:
        started = time.perf_counter()
        predict_texts(classifier, [sentence])
        timings.append((time.perf_counter() - started) * 1000)
    return statistics.median(timings)


def build_demo_bento(state: Path, env: dict[str, str], threads: int | None) -> None:
    """Register MiniLM with a fresh 2-class head as champion and `ratchet build` it."""
    code = f"""
import mlflow
from pathlib import Path
from mlflow import MlflowClient
from transformers import AutoModelForSequenceClassification, AutoTokenizer
from components.base_model import shipped_model_dir
from components.mlflow_model import log_classifier_model
out = Path({str(state)!r}) / "demo-model"
base = str(shipped_model_dir())
AutoModelForSequenceClassification.from_pretrained(
    base, num_labels=2, id2label={{0: "negative", 1: "positive"}},
    label2id={{"negative": 0, "positive": 1}}).save_pretrained(out)
AutoTokenizer.from_pretrained(base).save_pretrained(out)
exp = mlflow.create_experiment("ratchet", artifact_location=(Path({str(state)!r}) / "art").as_uri())
with mlflow.start_run(experiment_id=exp):
    info = log_classifier_model(out)
version = mlflow.register_model(info.model_uri, "ratchet-sst2")
MlflowClient().set_registered_model_alias("ratchet-sst2", "champion", version.version)
"""
    subprocess.run([sys.executable, "-c", code], env=env, cwd=PROJECT_ROOT, check=True)
    build = [sys.executable, "-c", SERVING_CLI, "build"]
    if threads:
        build += ["--set", f"serving.num_threads={threads}"]
    subprocess.run(build, env=env, cwd=PROJECT_ROOT, check=True)


def bento_model_dir(bento: str, env: dict[str, str]) -> tuple[str, dict]:
    """The HF folder and Bento arguments of a built Bento (read in a subprocess: BENTOML_HOME)."""
    code = (
        f"import bentoml, json; b = bentoml.get({bento!r}); "
        "m = bentoml.models.get(b.info.args['model_tag']); "
        "print(json.dumps({'dir': m.path_of('hf_model'), 'args': b.info.args}))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, cwd=PROJECT_ROOT, capture_output=True, text=True
    )
    if out.returncode:
        raise SystemExit(f"cannot read Bento {bento}: {out.stderr[-2000:]}")
    info = json.loads(out.stdout.strip().splitlines()[-1])
    return info["dir"], info["args"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bento", default="ratchet-sst2-service:latest")
    parser.add_argument("--demo-model", action="store_true", help="build a throwaway Bento")
    parser.add_argument("--requests", type=int, default=256, help="requests per level")
    parser.add_argument("--levels", default="1,8,32")
    parser.add_argument("--baseline-server", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--model-dir", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="with --demo-model: build with serving.num_threads=N (default: the cores); "
        "the baseline always uses the Bento's threads",
    )
    options = parser.parse_args()

    from serving.predict import container_cores

    if options.baseline_server:
        run_baseline_server(options.model_dir, options.port, options.threads or container_cores())
        return

    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "BENTOML_DO_NOT_TRACK": "true"}
    scratch = tempfile.TemporaryDirectory(prefix="serve-load-")
    if options.demo_model:
        state = Path(scratch.name)
        env.update(
            RATCHET_HOME=str(state),
            MLFLOW_TRACKING_URI=f"sqlite:///{state / 'mlflow.db'}",
            BENTOML_HOME=str(state / "bentoml"),
        )
        build_demo_bento(state, env, options.threads)
    else:
        env.setdefault("BENTOML_HOME", str(PROJECT_ROOT / ".ratchet" / "bentoml"))
    model_dir, bento_args = bento_model_dir(options.bento, env)
    # Same torch threads everywhere: what the Bento was built with (null = the cores).
    threads = int(bento_args.get("num_threads") or container_cores())
    levels = [int(level) for level in options.levels.split(",")]
    sentences = sst2_sentences(options.requests)
    print(
        f"model {bento_args['model_tag']}, {threads} torch threads, {os.cpu_count()} cores, "
        f"{len(sentences)} requests per level, load average {os.getloadavg()[0]:.1f}"
    )

    bare_ms = bare_model_p50_ms(model_dir, sentences, threads, bento_args.get("precision", "fp32"))
    print(f"bare model call (1 sentence, in-process): p50={bare_ms:.1f} ms", flush=True)

    port = free_port()
    bento_command = [sys.executable, "-c", SERVING_CLI, "serve", "--bento", options.bento]
    bento_results = measure_server(
        "bento", [*bento_command, "--port", str(port)], port, "/readyz", env, sentences, levels
    )
    port = free_port()
    baseline_command = [sys.executable, __file__, "--baseline-server", "--model-dir", model_dir]
    baseline_command += ["--port", str(port), "--threads", str(threads)]
    baseline_results = measure_server(
        "baseline", baseline_command, port, "/", env, sentences, levels
    )

    print("\nratios (bento / baseline):")
    for ours, theirs in zip(bento_results, baseline_results, strict=True):
        print(
            f"  c={ours.concurrency:<3} throughput x{ours.rps / theirs.rps:5.2f}   "
            f"p50 x{ours.percentile(50) / theirs.percentile(50):5.2f}   "
            f"p99 x{ours.percentile(99) / theirs.percentile(99):5.2f}"
        )
    single = next((r for r in bento_results if r.concurrency == 1), None)
    high = next((r for r in bento_results if r.concurrency == 32), None)
    high_base = next((r for r in baseline_results if r.concurrency == 32), None)
    print("\ngoals:")
    if high and high_base:
        print(
            f"  c=32 throughput >= 3x baseline: {high.rps / high_base.rps >= 3} "
            f"(x{high.rps / high_base.rps:.2f})"
        )
        print(f"  c=32 p99 below baseline:        {high.percentile(99) < high_base.percentile(99)}")
        print(f"  c=32 zero errors:               {high.errors == 0}")
    if single:
        ratio = single.percentile(50) / bare_ms
        print(f"  c=1 p50 within 20% of bare:     {ratio <= 1.2} (x{ratio:.2f})")
    scratch.cleanup()


if __name__ == "__main__":
    main()
