"""The `ratchet` CLI frame: help everywhere, `config show` with overrides, exit codes."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from flows.cli import get_app
from tests.conftest import PROJECT_ROOT

runner = CliRunner()
PARAMS = str(PROJECT_ROOT / "params.yaml")


def all_command_paths() -> list[list[str]]:
    """Every command and group, found by walking the click tree."""
    import typer.main

    root = typer.main.get_command(get_app())
    found: list[list[str]] = []

    def walk(command, prefix: list[str]) -> None:  # type: ignore[no-untyped-def]
        found.append(prefix)
        for name, sub in getattr(command, "commands", {}).items():
            walk(sub, [*prefix, name])

    walk(root, [])
    return found


@pytest.mark.parametrize("path", all_command_paths(), ids=lambda p: " ".join(p) or "ratchet")
def test_every_command_has_help(path: list[str]) -> None:
    result = runner.invoke(get_app(), [*path, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage" in result.output


def test_config_show_applies_set_override(state_dir) -> None:  # type: ignore[no-untyped-def]
    result = runner.invoke(
        get_app(), ["config", "show", "--params", PARAMS, "--json", "--set", "train.lr=1e-4"]
    )
    assert result.exit_code == 0, result.output
    shown = json.loads(result.stdout)
    assert shown["train"]["lr"] == pytest.approx(1e-4)
    assert shown["model"]["base"] is None


@pytest.mark.parametrize(
    ("override", "key"), [("train.nope=1", "train.nope"), ("train.lr=abc", "train.lr")]
)
def test_config_show_rejects_bad_override_naming_the_key(override: str, key: str) -> None:
    # A real process, so the exit code and stderr are what a shell user sees.
    completed = subprocess.run(
        [sys.executable, "-m", "flows.cli", "config", "show", "--params", PARAMS, "-s", override],
        capture_output=True,
        text=True,
        cwd=PROJECT_ROOT,
        check=False,
    )
    assert completed.returncode == 2
    assert key in completed.stderr
    assert "Traceback" not in completed.stderr
