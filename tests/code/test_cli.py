"""The `ratchet` CLI frame: help everywhere, `config show` with overrides, exit codes."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from cli.main import get_app
from tests.conftest import PROJECT_ROOT, prepared_split

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
        [sys.executable, "-m", "cli", "config", "show", "--params", PARAMS, "-s", override],
        capture_output=True,
        text=True,
        cwd=PROJECT_ROOT,
        check=False,
    )
    assert completed.returncode == 2
    assert key in completed.stderr
    assert "Traceback" not in completed.stderr


def show_json(*args: str) -> dict[str, Any]:
    result = runner.invoke(get_app(), list(args))
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_settings_options_before_and_after_the_command(state_dir: Path, tmp_path: Path) -> None:
    # Before the command they reach every command; after it they come last, so the
    # command's --set wins over the root's and its --config is merged after the root's.
    profile_a, profile_b = tmp_path / "a.yaml", tmp_path / "b.yaml"
    profile_a.write_text("train:\n  lr: 0.5\n  epochs: 7\n")
    profile_b.write_text("train:\n  lr: 0.25\n")
    root = ["--params", PARAMS, "--config", str(profile_a), "--set", "train.max_steps=11"]
    command = ["--config", str(profile_b), "--set", "train.max_steps=12"]
    train = show_json(*root, "config", "show", "--json", *command)["train"]
    assert (train["lr"], train["epochs"], train["max_steps"]) == (0.25, 7, 12)

    root_only = show_json("-s", "train.epochs=3", "-c", str(profile_b), "config", "show", "--json")
    assert (root_only["train"]["epochs"], root_only["train"]["lr"]) == (3, 0.25)


def test_command_params_replace_the_root_params(state_dir: Path, tmp_path: Path) -> None:
    missing = str(tmp_path / "missing.yaml")
    result = runner.invoke(get_app(), ["--params", missing, "config", "show", "--params", PARAMS])
    assert result.exit_code == 0, result.output
    result = runner.invoke(get_app(), ["--params", PARAMS, "config", "show", "--params", missing])
    assert result.exit_code == 2
    assert "missing.yaml" in result.output


def test_settings_load_once_and_only_when_a_command_runs(
    state_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from cli import options

    calls: list[tuple[Any, ...]] = []
    real = options.load_config

    def counting(*args: Any) -> Any:
        calls.append(args)
        return real(*args)

    monkeypatch.setattr(options, "load_config", counting)
    # --help needs no valid params.yaml: nothing is loaded.
    result = runner.invoke(get_app(), ["--params", "nowhere.yaml", "retrain", "--help"])
    assert result.exit_code == 0, result.output
    assert calls == []
    shown = show_json("config", "show", "--json", "--params", PARAMS, "-s", "train.epochs=2")
    assert shown["train"]["epochs"] == 2
    assert calls == [(Path(PARAMS), [], ["train.epochs=2"])]


def test_every_command_takes_the_settings_options() -> None:
    import typer.main

    root: Any = typer.main.get_command(get_app())
    for path in all_command_paths():
        command = root
        for name in path:
            command = command.commands[name]
        if not hasattr(command, "commands"):  # groups pass them on to their commands
            options = {opt for param in command.params for opt in param.opts}
            assert {"--params", "--config", "-c", "--set", "-s"} <= options, path


@pytest.mark.parametrize("verdict", ["approve", "reject"])
def test_force_is_refused_outside_promote_before_any_registry_call(verdict: str) -> None:
    # promote, approve and reject are one verdict command: --force only means something
    # to promote, and on the others it is an error, not silently ignored.
    result = runner.invoke(get_app(), ["registry", verdict, "3", "--reason", "ok", "--force"])
    assert result.exit_code == 5, result.output
    assert f"--force applies to `registry promote` only, not to {verdict}" in result.output


def test_each_error_class_keeps_its_documented_exit_code() -> None:
    from components import errors

    codes = {
        name: getattr(errors, name).exit_code
        for name in (
            "RatchetError",
            "ConfigError",
            "DataError",
            "DataValidationError",
            "TrainingError",
            "RegistryError",
            "AliasChanged",
            "GateRejected",
            "ServingError",
            "VersioningError",
        )
    }
    assert codes == {
        "RatchetError": 1,
        "ConfigError": 2,
        "DataError": 3,
        "DataValidationError": 3,  # inherited from DataError
        "TrainingError": 4,
        "RegistryError": 5,
        "AliasChanged": 5,
        "GateRejected": 6,
        "ServingError": 7,
        "VersioningError": 8,
    }


def test_evaluate_prints_the_suite_notice_the_table_and_the_files(
    state_dir: Path, tmp_path: Path, tiny_classifiers: dict
) -> None:
    project = tmp_path / "project"
    prepared = project / "data" / "prepared"
    prepared.mkdir(parents=True)
    shutil.copy(PROJECT_ROOT / "params.yaml", project / "params.yaml")
    for seed, name in enumerate(("train", "validation", "test")):
        prepared_split(24, seed).to_parquet(prepared / f"{name}.parquet", index=False)
    (prepared / "manifest.json").write_text(json.dumps({"labels": ["negative", "positive"]}))
    settings = [
        "--params", str(project / "params.yaml"),
        "--config", str(PROJECT_ROOT / "configs" / "smoke.yaml"),
    ]  # fmt: skip
    model = ["--model-dir", str(tiny_classifiers["good"])]
    result = CliRunner().invoke(get_app(), [*settings, "evaluate", *model])
    assert result.exit_code == 0, result.output
    output = " ".join(result.output.split())
    assert output.startswith(
        "eval.behaviour_checks is auto and no shipped suite is written for labels "
        "['negative', 'positive']: no behavioural checks run"
    )
    assert "Test split (24 examples)" in output and "│ accuracy │ 1.0000 │" in output
    assert output.endswith(f"files: {project / 'metrics'}")
    assert (project / "metrics" / "eval.json").is_file()
    result = CliRunner().invoke(get_app(), [*settings, "evaluate", *model, "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)  # the notice stays out of the JSON
    assert summary["metrics"]["accuracy"] == 1.0 and summary["metrics"]["test_examples"] == 24
