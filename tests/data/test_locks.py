"""One writer of data/: the data folder's lock serialises the flow, the CLI and dvc repro."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from typer.testing import CliRunner

from components.errors import DataError
from components.locks import DATA_LOCK_FILE, data_lock, data_lock_path
from components.state import ProjectPaths
from cli.main import get_app
from tests.conftest import PROJECT_ROOT

# Holds the lock in another process: logs "A-start", waits for the file ``go``, logs
# "A-end" and releases.
HOLDER = """
import sys, time
from pathlib import Path
from components.locks import data_lock
data_dir, log, go = (Path(arg) for arg in sys.argv[1:4])
with data_lock(data_dir):
    with log.open("a") as handle:
        handle.write("A-start\\n")
    while not go.exists():
        time.sleep(0.02)
    with log.open("a") as handle:
        handle.write("A-end\\n")
"""


def wait_for(condition: Any, what: str, seconds: float = 60.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


@contextmanager
def lock_held_by_another_process(data_dir: Path, tmp_path: Path) -> Iterator[tuple[Path, Path]]:
    """Yields (log, go): the holder has the lock until ``go`` is created."""
    log, go = tmp_path / "order.log", tmp_path / "go"
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(data_dir), str(log), str(go)],
        cwd=PROJECT_ROOT,
        env={**os.environ, "PYTHONPATH": str(PROJECT_ROOT)},
    )
    try:
        wait_for(lambda: log.is_file() and "A-start" in log.read_text(), "the holder")
        yield log, go
    finally:
        go.touch()
        assert holder.wait(timeout=60) == 0


def test_a_second_writer_waits_for_the_first(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    with lock_held_by_another_process(data_dir, tmp_path) as (log, go):

        def second_writer() -> None:
            with data_lock(data_dir), log.open("a") as handle:
                handle.write("B-start\n")

        thread = threading.Thread(target=second_writer)
        thread.start()
        time.sleep(0.5)
        assert log.read_text() == "A-start\n"  # still waiting
        go.touch()
        thread.join(timeout=60)
    assert log.read_text().splitlines() == ["A-start", "A-end", "B-start"]
    assert data_lock_path(data_dir) == data_dir.resolve() / DATA_LOCK_FILE


def test_the_lock_is_reentrant_in_a_thread_and_exclusive_between_threads(
    tmp_path: Path,
) -> None:
    data_dir = tmp_path / "data"
    outcome: list[str] = []

    def other_thread() -> None:
        try:
            with data_lock(data_dir, timeout_s=0):
                outcome.append("acquired")
        except DataError as error:
            outcome.append(str(error))

    with data_lock(data_dir), data_lock(data_dir):  # nested: no self-deadlock
        thread = threading.Thread(target=other_thread)
        thread.start()
        thread.join(timeout=30)
    assert len(outcome) == 1 and "is being written by another process" in outcome[0]
    other_thread()
    assert outcome[-1] == "acquired"


def test_ratchet_prepare_waits_while_another_process_writes_data(
    tmp_path: Path, project: Path, good_folder: Path
) -> None:
    prepared = project / "data" / "prepared"
    result: dict[str, Any] = {}
    params = str(project / "params.yaml")

    with lock_held_by_another_process(project / "data", tmp_path) as (log, go):

        def prepare() -> None:
            result["run"] = CliRunner().invoke(
                get_app(),
                ["prepare", "--data", str(good_folder), "--skip-validation", "--params", params],
            )
            with log.open("a") as handle:
                handle.write("B-done\n")

        thread = threading.Thread(target=prepare)
        thread.start()
        # Unlocked, this prepare takes about a second; locked, it waits for the holder.
        thread.join(timeout=10)
        assert not prepared.exists()
        go.touch()
        thread.join(timeout=300)
    assert log.read_text().splitlines() == ["A-start", "A-end", "B-done"]
    assert result["run"].exit_code == 0, result["run"].output
    assert (prepared / "manifest.json").is_file()


def test_the_flow_holds_the_lock_through_its_data_steps(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from components import tracking
    from flows import retrain, tasks
    from flows.run_record import RunRecord

    paths = ProjectPaths(project_root=tmp_path, state_dir=tmp_path / "state")
    data_dir = paths.raw_dir.parent
    seen: dict[str, bool] = {}

    def held_by_someone_else() -> bool:
        """True when another thread cannot take the data lock now."""
        outcome: list[bool] = []

        def attempt() -> None:
            try:
                with data_lock(data_dir, timeout_s=0):
                    outcome.append(False)
            except DataError:
                outcome.append(True)

        thread = threading.Thread(target=attempt)
        thread.start()
        thread.join(timeout=30)
        return outcome == [True]

    def step(name: str, value: Any) -> Any:
        def run(*args: Any, **kwargs: Any) -> Any:
            seen[name] = held_by_someone_else()
            return value

        return run

    monkeypatch.setattr(tasks, "ingest_data", step("ingest", tmp_path / "incoming"))
    monkeypatch.setattr(tasks, "validate_data", step("validate", {}))
    monkeypatch.setattr(tasks, "prepare_data", step("prepare", {"splits": {}}))
    monkeypatch.setattr(tasks, "version_data", step("version-data", {"prepared_data_md5": "x"}))
    monkeypatch.setattr(tasks, "push_data", step("push-data", "remote"))
    run = SimpleNamespace(info=SimpleNamespace(run_id="run"))
    monkeypatch.setattr(tracking, "stage_run", lambda *args, **kwargs: nullcontext(run))
    for name in ("log_dict", "log_artifacts", "log_metrics"):
        monkeypatch.setattr(tracking, name, lambda *args, **kwargs: None)
    record = RunRecord("id", "name", tmp_path / "record.json")

    md5s = retrain.prepare_data_exclusively(SimpleNamespace(), paths, record)  # type: ignore[arg-type]
    assert md5s == {"prepared_data_md5": "x"}
    assert seen == dict.fromkeys(
        ["ingest", "validate", "prepare", "version-data", "push-data"], True
    )
    assert not held_by_someone_else()  # released afterwards
