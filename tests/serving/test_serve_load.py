"""The load benchmark (benchmarks/serve_load.py, run by hand): its options and one short run."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

from tests.conftest import PROJECT_ROOT
from tests.serving.conftest import BuiltBento

SCRIPT = PROJECT_ROOT / "benchmarks" / "serve_load.py"


@pytest.fixture(scope="module")
def serve_load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("serve_load", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["serve_load"] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_runtimes_become_build_settings(serve_load: ModuleType) -> None:
    known = ["torch", "onnx", "onnx-int8"]

    assert serve_load.runtime_overrides(["torch", "onnx-int8"], known) == {
        "torch": ["--set", "serving.runtime=torch"],
        "onnx-int8": ["--set", "serving.runtime=onnx-int8"],
    }
    with pytest.raises(SystemExit, match="--runtime tf: this checkout builds only torch, onnx"):
        serve_load.runtime_overrides(["torch", "tf"], known)
    # A setting whose choices are not listed: `ratchet build` will check the value.
    assert serve_load.runtime_overrides(["onnx"], []) == {"onnx": ["--set", "serving.runtime=onnx"]}


def test_a_checkout_without_runtimes_builds_torch_only(serve_load: ModuleType) -> None:
    assert serve_load.runtime_overrides(["torch"], None) == {"torch": []}
    with pytest.raises(SystemExit, match="only torch \\(it has no serving.runtime setting\\)"):
        serve_load.runtime_overrides(["torch", "onnx"], None)


def test_options_are_checked(serve_load: ModuleType) -> None:
    options = serve_load.parse_args(["--runtime", "torch", "--levels", "1,8", "--requests", "5"])

    assert (options.runtime, options.levels, options.requests) == ("torch", [1, 8], 5)
    with pytest.raises(SystemExit):
        serve_load.parse_args(["--levels", "0,8"])


def test_logging_rounds_are_an_option(serve_load: ModuleType) -> None:
    assert serve_load.parse_args([]).logging_rounds == 0
    assert serve_load.parse_args(["--logging-rounds", "5", "--levels", "32"]).logging_rounds == 5
    with pytest.raises(SystemExit):
        serve_load.parse_args(["--logging-rounds", "-1"])


def test_logging_rounds_alternate_and_compare_by_the_median(serve_load: ModuleType) -> None:
    from benchmarks._logging_overhead import OverheadRound, median_ratio, round_order, verdict

    assert [round_order(index) for index in range(3)] == [
        ("off", "on"),
        ("on", "off"),
        ("off", "on"),
    ]
    rounds = [OverheadRound(100.0, 97.0, 288), OverheadRound(100.0, 50.0, 288)]
    rounds.append(OverheadRound(200.0, 198.0, 288))
    # The median, not the mean (0.82): one disturbed round does not decide.
    assert median_ratio(rounds) == pytest.approx(0.97)
    assert verdict(0.97) == "median on/off = 0.970 (drop +3.0%; within the 5% allowed)"
    assert verdict(0.94) == "median on/off = 0.940 (drop +6.0%; OVER the 5% allowed)"
    with pytest.raises(ValueError, match="--logging-rounds must be at least 1"):
        median_ratio([])
    with pytest.raises(ValueError, match="a log-off server answered no request"):
        median_ratio([OverheadRound(0.0, 10.0, 0)])


def test_the_logged_server_gets_the_file_exporter_in_its_own_state(tmp_path: Path) -> None:
    from benchmarks._logging_overhead import traffic_environment
    from serving.traffic_log import settings_from_environment

    on = settings_from_environment(traffic_environment(tmp_path / "on", "file"))
    off = settings_from_environment(traffic_environment(tmp_path / "off", "off"))

    assert (on.exporter, on.log_dir) == ("file", str(tmp_path / "on" / "traffic"))
    assert (off.exporter, off.log_dir) == ("off", str(tmp_path / "off" / "traffic"))
    assert on.feedback_file == str(tmp_path / "on" / "feedback" / "feedback.jsonl")
    assert not on.log_texts


@pytest.mark.integration
@pytest.mark.slow
def test_a_short_run_on_the_tiny_bento(built_bento: BuiltBento) -> None:
    command = [sys.executable, str(SCRIPT), "--bento", built_bento.tag, "--requests", "6"]
    command += ["--levels", "1,3", "--warmup", "2", "--no-plain-servers"]

    run = subprocess.run(
        command, env=built_bento.env, capture_output=True, text=True, timeout=300, check=False
    )

    assert run.returncode == 0, run.stderr[-3000:]
    rows = [line.split() for line in run.stdout.splitlines() if line.startswith("bento1-torch ")]
    assert [(row[1], row[2]) for row in rows[:2]] == [("c=1", "n=6"), ("c=3", "n=6")]
    assert all(row[-1] == "errors=0" for row in rows[:2])
    assert "sentences/s" in run.stdout
    assert "c=1 p50 - in-process single p50" in run.stdout


def test_the_lean_client_reads_whole_answers_and_counts_failures() -> None:
    """drive_lean against a tiny server answering by the text: 200 with a length, 200 in
    chunks, 200 then closing the connection (said, or HTTP/1.0), 500; every request is
    sent exactly once."""
    import asyncio
    import json

    from benchmarks._load_client import drive_lean

    seen: list[str] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            try:
                head = await reader.readuntil(b"\r\n\r\n")
            except asyncio.IncompleteReadError:
                break
            length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
            text = json.loads(await reader.readexactly(length))["texts"][0]
            seen.append(text)
            if text == "chunked":
                writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
                writer.write(b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n")
            elif text in ("close", "http/1.0"):
                if text == "close":
                    writer.write(b"HTTP/1.1 200 OK\r\nConnection: close\r\n")
                else:  # http.server's default: HTTP/1.0 closes without saying so
                    writer.write(b"HTTP/1.0 200 OK\r\n")
                writer.write(b"Content-Length: 2\r\n\r\n{}")
                await writer.drain()
                break
            else:
                status = b"500 Internal Server Error" if text == "fail" else b"200 OK"
                writer.write(b"HTTP/1.1 " + status + b"\r\nContent-Length: 2\r\n\r\n{}")
            await writer.drain()
        writer.close()

    async def run() -> tuple[int, int]:
        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        texts = ["a", "chunked", "close", "b", "fail", "http/1.0", "c", "http/1.0", "d"]
        async with server:
            outcome = await drive_lean(f"http://127.0.0.1:{port}/classify", texts, 2)
        return len(outcome.latencies_ms), outcome.errors

    assert asyncio.run(run()) == (8, 1)
    assert sorted(seen) == sorted(
        ["a", "chunked", "close", "b", "fail", "http/1.0", "c", "http/1.0", "d"]
    )
