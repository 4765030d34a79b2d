"""Load benchmark: Bentos side by side with their in-process limit and two plain servers.

    .venv/bin/python benchmarks/serve_load.py                          # champion, torch runtime
    .venv/bin/python benchmarks/serve_load.py --runtime torch,onnx,onnx-int8
    .venv/bin/python benchmarks/serve_load.py --demo-model             # no champion yet
    .venv/bin/python benchmarks/serve_load.py --bento TAG1,TAG2 --no-plain-servers
    .venv/bin/python benchmarks/serve_load.py --bento TAG --logging-rounds 5 --levels 32

One run on one machine, the same requests for every server: single sentences from SST-2
validation, sent at concurrency 1, 8 and 32 (bounded: each sentence once per level) by a
lean keep-alive client (``--client``, ``benchmarks/_load_client.py``), on loopback only,
one server at a time. For each Bento (one built per ``--runtime`` from the champion,
``ratchet build --set serving.runtime=X``, and any built ones named by ``--bento``):

1. the limit: the Bento's own model called in-process (no HTTP) on batches of
   ``serving.max_batch_size`` sentences (sentences/s), and on one sentence (p50);
2. the Bento served by ``ratchet serve``.

Then, with the torch Bento's model and threads: what a user would build instead (FastAPI +
uvicorn around a Hugging Face ``pipeline`` with greedy batching), and a one-request-at-a-time
``http.server`` + ``pipeline`` for continuity. Prints requests/s, p50/p95/p99 and errors per
level, and the ratios Bento/limit, Bento/torch Bento, Bento/alternative. Run by hand, not
in CI: figures depend on the machine and whatever else runs on it.

``--logging-rounds N`` measures the inference log's cost instead (issue 22): the first Bento
only, served with the log off and on in N alternating rounds at the highest ``--levels``
value; see ``benchmarks/_logging_overhead.py``.
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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

PROJECT_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT_ROOT))
from benchmarks._load_client import DRIVERS  # noqa: E402
from benchmarks._logging_overhead import logging_overhead  # noqa: E402
from components.waiting import wait_for_http  # noqa: E402

SST2_DEV = PROJECT_ROOT.parent / "shared" / "data" / "sst2" / "dev.tsv"
PLAIN_SERVERS = Path(__file__).with_name("plain_servers.py")
RATCHET_CLI = [sys.executable, "-c", "from cli.main import main; main()"]
TORCH = "torch"


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


@dataclass
class Candidate:
    """A Bento under test: its runtime, in-process limit and results per level."""

    name: str
    tag: str
    runtime: str
    limit: dict[str, float] = field(default_factory=dict)
    results: list[LoadResult] = field(default_factory=list)
    ceiling: list[LoadResult] = field(default_factory=list)


def sst2_sentences(limit: int) -> list[str]:
    with SST2_DEV.open(encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle, delimiter="\t", quoting=csv.QUOTE_NONE))
    return [row["sentence"] for row in rows][:limit]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def runtime_overrides(runtimes: list[str], known: list[str] | None) -> dict[str, list[str]]:
    """``ratchet build`` options per runtime. ``known`` is the ``serving.runtime`` choices of
    this checkout ([] when it does not list them: ``ratchet build`` checks), None when it has
    no such setting (then only torch, built as is).

    Raises:
        SystemExit: a runtime this checkout cannot build, naming the ones it can.
    """
    if not runtimes:
        raise SystemExit("--runtime needs at least one runtime")
    choices = known if known is not None else [TORCH]
    unknown = [runtime for runtime in runtimes if choices and runtime not in choices]
    if unknown:
        raise SystemExit(
            f"--runtime {','.join(unknown)}: this checkout builds only {', '.join(choices)}"
            + ("" if known is not None else " (it has no serving.runtime setting)")
        )
    if known is None:
        return {TORCH: []}
    return {runtime: ["--set", f"serving.runtime={runtime}"] for runtime in runtimes}


def known_runtimes() -> list[str] | None:
    """The values ``serving.runtime`` accepts here; None when the setting does not exist."""
    import typing

    from components.config import ServingConfig

    field_info = ServingConfig.model_fields.get("runtime")
    if field_info is None:
        return None
    return [str(value) for value in typing.get_args(field_info.annotation)]


# ---------------------------------------------------------------- load driver
async def drive(
    url: str, sentences: list[str], concurrency: int, name: str, client: str = "lean"
) -> LoadResult:
    """Send each sentence once, ``concurrency`` requests in flight at a time, with the
    ``client`` driver (``benchmarks/_load_client.py``)."""
    outcome = await DRIVERS[client](url, sentences, concurrency)
    return LoadResult(
        name, concurrency, len(sentences), outcome.errors, outcome.seconds, outcome.latencies_ms
    )


def stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def measure_server(
    name: str, command: list[str], ready_url: str, env: dict[str, str], plan: argparse.Namespace
) -> list[LoadResult]:
    """Start a server, warm it up, drive it at each concurrency level, stop it."""
    process = subprocess.Popen(
        command,
        env=env,
        cwd=PROJECT_ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    url = ready_url.rsplit("/", 1)[0] + "/classify"
    try:
        wait_for_http(ready_url, 300, process=process)
        asyncio.run(drive(url, plan.sentences[: plan.warmup], 4, name, plan.client))
        results = []
        for concurrency in plan.levels:
            result = asyncio.run(drive(url, plan.sentences, concurrency, name, plan.client))
            print_result(result)
            results.append(result)
        return results
    finally:
        stop(process)


def print_result(result: LoadResult) -> None:
    print(
        f"{result.name:<14} c={result.concurrency:<3} n={result.requests:<4} "
        f"load={os.getloadavg()[0]:4.1f}  "
        f"rps={result.rps:7.1f}  p50={result.percentile(50):7.1f} ms  "
        f"p95={result.percentile(95):7.1f} ms  p99={result.percentile(99):7.1f} ms  "
        f"errors={result.errors}",
        flush=True,
    )


# ---------------------------------------------------------------- Bentos
def in_process_limit(bento: str, sentences: list[str]) -> dict[str, float]:
    """The Bento's service instantiated here, as its server would (same code, arguments,
    runtime and threads), its model called without HTTP: batches of ``max_batch_size``
    sentences (sentences/s) and single sentences (p50 ms)."""
    import bentoml

    service: Any = bentoml.load(bento)  # imports the Bento's own code with its arguments
    # The service that holds the model: a dependency if the Bento has one.
    holder = next((dep.on for dep in service.dependencies.values() if dep.on), service)
    instance = holder()
    from serving.predict import predict_texts  # the Bento's copy, imported by the load

    def score(texts: list[str]) -> Any:
        return predict_texts(instance.classifier, texts)

    batch = int(bentoml.bentos.get(bento).info.args.get("max_batch_size", 64))
    score(sentences[:batch])  # warm up
    started = time.perf_counter()
    for start in range(0, len(sentences), batch):
        score(sentences[start : start + batch])
    per_second = len(sentences) / (time.perf_counter() - started)
    singles = []
    for sentence in sentences[:100]:
        started = time.perf_counter()
        score([sentence])
        singles.append((time.perf_counter() - started) * 1000)
    return {"sentences_per_s": per_second, "single_p50_ms": statistics.median(singles)}


def measure_limit(tag: str, env: dict[str, str], requests: int) -> dict[str, float]:
    """:func:`in_process_limit` in a fresh process (the Bento's modules, BENTOML_HOME)."""
    command = [sys.executable, __file__, "--limit-of", tag, "--requests", str(requests)]
    out = subprocess.run(
        command, env=env, cwd=tempfile.gettempdir(), capture_output=True, text=True
    )
    if out.returncode:
        raise SystemExit(f"in-process limit of {tag} failed: {out.stderr[-2000:]}")
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


def register_demo_champion(state: Path, env: dict[str, str]) -> None:
    """Register MiniLM with a fresh 2-class head as champion (no trained model needed)."""
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


def build_bento(options: list[str], env: dict[str, str], alias: str) -> str:
    """``ratchet build --alias ALIAS OPTIONS...``; returns the Bento tag."""
    command = [*RATCHET_CLI, "build", "--alias", alias, *options]
    out = subprocess.run(command, env=env, cwd=PROJECT_ROOT, capture_output=True, text=True)
    if out.returncode:
        raise SystemExit(f"{' '.join(command[3:])} failed: {out.stderr[-2000:]}")
    return out.stdout.strip().splitlines()[-1]


def bento_info(bento: str, env: dict[str, str]) -> dict[str, Any]:
    """A built Bento's arguments and its model's HF folder (read in a subprocess, where
    BENTOML_HOME applies)."""
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
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


def candidates(options: argparse.Namespace, env: dict[str, str]) -> list[Candidate]:
    """One Bento built per ``--runtime`` (none with ``--bento`` alone), then the named ones."""
    found = []
    runtimes = [r for r in options.runtime.split(",") if r] if options.runtime else []
    if runtimes or not options.bento:
        for runtime, build_options in runtime_overrides(
            runtimes or [TORCH], known_runtimes()
        ).items():
            if options.threads:
                build_options = [*build_options, "--set", f"serving.num_threads={options.threads}"]
            tag = build_bento(build_options, env, options.alias)
            found.append(Candidate(f"bento-{runtime}", tag, runtime))
    for index, tag in enumerate(t for t in (options.bento or "").split(",") if t):
        runtime = str(bento_info(tag, env)["args"].get("runtime", TORCH))
        found.append(Candidate(f"bento{index + 1}-{runtime}", tag, runtime))
    return found


# ---------------------------------------------------------------- report
def ratio(ours: float, theirs: float) -> str:
    return f"x{ours / theirs:5.2f}" if theirs else "  n/a"


def print_summary(bentos: list[Candidate], others: dict[str, list[LoadResult]]) -> None:
    torch_bento = next((c for c in bentos if c.runtime == TORCH), bentos[0])
    print("\nin-process limit (the Bento's model, no HTTP):")
    for candidate in bentos:
        print(
            f"  {candidate.name:<14} {candidate.limit['sentences_per_s']:7.1f} sentences/s "
            f"(batches)  single p50={candidate.limit['single_p50_ms']:6.1f} ms"
        )
    print(f"\nratios (throughput; p99 for c=32) against {torch_bento.name}, its limit, others:")
    for candidate in bentos:
        for result, reference in zip(candidate.results, torch_bento.results, strict=True):
            line = (
                f"  {candidate.name:<14} c={result.concurrency:<3} "
                f"/torch-bento {ratio(result.rps, reference.rps)}  "
                f"/limit {ratio(result.rps, candidate.limit['sentences_per_s'])}"
            )
            ceiling = [r for r in candidate.ceiling if r.concurrency == result.concurrency]
            if ceiling:
                line += f"  /ceiling {ratio(result.rps, ceiling[0].rps)}"
                line += (
                    f" (ceiling/limit {ratio(ceiling[0].rps, candidate.limit['sentences_per_s'])})"
                )
            for name, results in others.items():
                other = next(r for r in results if r.concurrency == result.concurrency)
                line += f"  /{name} {ratio(result.rps, other.rps)}"
                if result.concurrency == max(r.concurrency for r in results):
                    line += f" (p99 {ratio(result.percentile(99), other.percentile(99))})"
            print(line)
        single = next((r for r in candidate.results if r.concurrency == 1), None)
        if single:
            gap = single.percentile(50) - candidate.limit["single_p50_ms"]
            print(f"  {candidate.name:<14} c=1 p50 - in-process single p50 = {gap:+.1f} ms")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument(
        "--runtime",
        help="comma-separated serving.runtime values to build from --alias and compare "
        "(default torch when no --bento is given; a checkout without serving.runtime "
        "builds torch only)",
    )
    parser.add_argument("--bento", help="comma-separated built Bento tags to compare too")
    parser.add_argument("--alias", default="champion", help="registry alias to build from")
    parser.add_argument("--demo-model", action="store_true", help="throwaway MiniLM champion")
    parser.add_argument("--requests", type=int, default=256, help="requests per level")
    parser.add_argument("--levels", default="1,8,32", help="concurrency levels")
    parser.add_argument("--warmup", type=int, default=32, help="requests before measuring")
    parser.add_argument(
        "--client",
        choices=sorted(DRIVERS),
        default="lean",
        help="load generator: lean (a keep-alive HTTP/1.1 client that spends little CPU "
        "on the cores it shares with the server) or httpx (the driver of runs before "
        "2026-11-30)",
    )
    parser.add_argument(
        "--no-plain-servers", action="store_true", help="skip the FastAPI and http.server ones"
    )
    parser.add_argument(
        "--ceiling",
        action="store_true",
        help="also serve each Bento's model from the leanest Python server (a bare ASGI app, "
        "plain_servers.py ceiling): how close any Python HTTP server gets to the limit here",
    )
    parser.add_argument(
        "--threads", type=int, help="build with serving.num_threads=N (default: the rule)"
    )
    parser.add_argument(
        "--logging-rounds",
        type=int,
        default=0,
        help="instead: serve the first Bento with the inference log off and on, N rounds "
        "in alternating order, at the highest --levels value; print the median on/off ratio",
    )
    parser.add_argument("--limit-of", help=argparse.SUPPRESS)
    options = parser.parse_args(argv)
    options.levels = [int(level) for level in options.levels.split(",")]
    if options.requests < 1 or min(options.levels) < 1:
        parser.error("--requests and --levels must be positive")
    if options.logging_rounds < 0:
        parser.error("--logging-rounds must be 0 (off) or a number of rounds")
    return options


def serve_bento(
    name: str, tag: str, env: dict[str, str], plan: argparse.Namespace
) -> list[LoadResult]:
    """``ratchet serve --bento TAG`` on a free port, measured by :func:`measure_server`."""
    port = free_port()
    command = [*RATCHET_CLI, "serve", "--bento", tag, "--port", str(port)]
    return measure_server(name, command, f"http://127.0.0.1:{port}/readyz", env, plan)


def serve_plain(
    kind: str,
    info: dict[str, Any],
    env: dict[str, str],
    plan: argparse.Namespace,
    name: str | None = None,
    extra: tuple[str, ...] = (),
) -> list[LoadResult]:
    """``plain_servers.py KIND`` around a Bento's model folder, with as many threads as all
    its model workers together and its batch size, measured like the Bentos."""
    from serving.predict import container_cores
    from serving.resources import plan_workers

    args = info["args"]
    used = plan_workers(container_cores(), args.get("workers"), args.get("num_threads"))
    port = free_port()
    command = [sys.executable, str(PLAIN_SERVERS), kind, "--model-dir", info["dir"]]
    command += ["--port", str(port), "--threads", str(used.workers * used.threads)]
    command += ["--max-batch", str(args["max_batch_size"]), *extra]
    return measure_server(name or kind, command, f"http://127.0.0.1:{port}/", env, plan)


def run_plain_servers(
    info: dict[str, Any], env: dict[str, str], plan: argparse.Namespace
) -> dict[str, list[LoadResult]]:
    """The alternative and the one-at-a-time baseline, with the torch Bento's model."""
    return {name: serve_plain(name, info, env, plan) for name in ("alternative", "baseline")}


def run_ceiling(candidate: Candidate, env: dict[str, str], plan: argparse.Namespace) -> None:
    """The leanest Python server around this Bento's model, runtime, threads and batches in
    flight (``plain_servers.py ceiling``)."""
    info = bento_info(candidate.tag, env)
    runtime = info["args"].get("runtime", TORCH)
    extra = ("--runtime", runtime, "--in-flight", "2" if runtime == "onnx-int8" else "1")
    candidate.ceiling = serve_plain("ceiling", info, env, plan, f"ceiling-{runtime}", extra)


def main() -> None:
    options = parse_args()
    if options.limit_of:
        print(json.dumps(in_process_limit(options.limit_of, sst2_sentences(options.requests))))
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
        register_demo_champion(state, env)
    else:  # the project's own store, where `ratchet build` put the Bentos
        from components.state import ProjectPaths

        env.setdefault("BENTOML_HOME", str(ProjectPaths.discover(PROJECT_ROOT).bentoml_home))
    options.sentences = sst2_sentences(options.requests)
    bentos = candidates(options, env)
    if options.logging_rounds:
        first = bentos[0]
        logging_overhead(first.name, first.tag, env, options, serve_bento)
        scratch.cleanup()
        return
    print(
        f"{len(bentos)} Bento(s): {', '.join(f'{c.name}={c.tag}' for c in bentos)}; "
        f"{os.cpu_count()} cores, {len(options.sentences)} requests per level, "
        f"load average {os.getloadavg()[0]:.1f}",
        flush=True,
    )
    for candidate in bentos:
        candidate.limit = measure_limit(candidate.tag, env, options.requests)
        candidate.results = serve_bento(candidate.name, candidate.tag, env, options)
        if options.ceiling:
            run_ceiling(candidate, env, options)
    others = {}
    if not options.no_plain_servers:
        torch_bento = next((c for c in bentos if c.runtime == TORCH), bentos[0])
        others = run_plain_servers(bento_info(torch_bento.tag, env), env, options)
    print_summary(bentos, others)
    scratch.cleanup()


if __name__ == "__main__":
    main()
