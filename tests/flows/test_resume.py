"""Killing `ratchet retrain` during training and running it again resumes from the checkpoint."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.flows.conftest import flow_overrides

pytestmark = [pytest.mark.integration, pytest.mark.slow]
RATCHET = str(Path(sys.executable).with_name("ratchet"))


def retrain_command(project: Path, tiny_bert_dir: Path) -> list[str]:
    overrides = flow_overrides(
        tiny_bert_dir,
        **{
            "pretrain.enabled": "false",
            "train.epochs": "50",
            "train.max_steps": "400",
            "train.checkpoint_every_steps": "20",
            "train.eval_every_steps": "400",
            "train.deterministic": "true",
        },
    )
    command = [RATCHET, "retrain", "--params", str(project / "params.yaml")]
    for override in overrides:
        command += ["--set", override]
    return command


def wait_for_checkpoint(checkpoints: Path, process: subprocess.Popen, timeout: float) -> Path:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = sorted(checkpoints.glob("train-*/step-*"))
        if found:
            return found[0]
        if process.poll() is not None:
            raise AssertionError(f"retrain ended (code {process.returncode}) before a checkpoint")
        time.sleep(0.05)
    raise AssertionError("no training checkpoint appeared")


def test_killed_retrain_resumes_from_checkpoint_and_finishes(
    flow_project: Path, state_dir: Path, tiny_bert_dir: Path
) -> None:
    command = retrain_command(flow_project, tiny_bert_dir)
    first = subprocess.Popen(
        command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    checkpoint = wait_for_checkpoint(state_dir / "checkpoints", first, timeout=300)
    os.killpg(first.pid, signal.SIGKILL)
    first.wait(timeout=30)
    assert first.returncode == -signal.SIGKILL

    second = subprocess.run(command, capture_output=True, text=True, timeout=600, check=False)

    output = second.stdout + second.stderr
    assert second.returncode == 0, output[-3000:]
    assert "resuming from" in output, "training started over instead of resuming"
    assert checkpoint.parent.name in output
    assert "promoted" in output

    from mlflow import MlflowClient

    assert str(MlflowClient().get_registered_model("ratchet-sst2").aliases["champion"]) == "1"
