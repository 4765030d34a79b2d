"""`ratchet retrain`, `ratchet deploy` and `ratchet demo`: run the flow now or on a schedule."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.panel import Panel
from rich.table import Table

from cli.options import Settings, command, console, err_console, load, settings
from components.errors import RatchetError

# The demo profile of each task: sized so both training stages take a few minutes on 2 cores.
DEMO_PROFILES = {
    "text-classification": Path("configs/demo.yaml"),
    "token-classification": Path("configs/conll-demo.yaml"),
}
# What the demo's smoke request asks the served champion, by task: (endpoint, texts).
SMOKE_REQUESTS = {
    "text-classification": ("classify", ["a gripping, beautifully acted film", "a dull script"]),
    "token-classification": ("entities", ["John Smith moved from Berlin to Paris in 2019."]),
}
PROCESS_POOL = "ratchet-process"


def summary_table(summary: dict[str, Any]) -> Table:
    table = Table(show_header=False, box=None, pad_edge=False)
    table.add_column(style="bold")
    table.add_column()
    for key, value in summary.items():
        if isinstance(value, dict):
            value = ", ".join(f"{name}={number}" for name, number in value.items())
        table.add_row(key, str(value))
    return table


def failure_lines(error: BaseException) -> str:
    """The failing step and its cause, for the last lines a user reads."""
    from components.errors import DataValidationError

    if isinstance(error, DataValidationError):
        return f"validation failed:\n{error}"
    return f"{type(error).__name__}: {error}"


def run_retrain(
    params: Path, config: list[Path] | None, set_: list[str] | None, **options: Any
) -> dict[str, Any]:
    """Run the retrain flow in-process with these settings options (see ``retrain_with``)."""
    return retrain_with(Settings(params, list(config or []), list(set_ or [])), **options)


def retrain_with(given: Settings, **options: Any) -> dict[str, Any]:
    """Run the retrain flow in-process. Secret overrides (``serving.api_key``, tracking URIs
    with credentials) reach it through this process's environment for the run, never as
    flow parameters, which Prefect stores in its database."""
    from components.config.overrides import split_secret_overrides

    given.load()  # validates the config before Prefect starts
    from flows.retrain import retrain

    overrides, secret_environment = split_secret_overrides(given.overrides)
    # As before, a variable the user already exported beats the setting.
    unset = {name: value for name, value in secret_environment.items() if name not in os.environ}
    with temporary_environment(unset):
        return retrain(
            params=str(given.params_file),
            config_files=[str(path) for path in given.config_files],
            overrides=overrides,
            **options,
        )


@contextlib.contextmanager
def temporary_environment(variables: dict[str, str]) -> Iterator[None]:
    """Set ``variables`` in this process's environment, restoring the old values after."""
    saved = {name: os.environ.get(name) for name in variables}
    os.environ.update(variables)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


commands = typer.Typer()
GROUPS = {None: commands}


@command(commands, "retrain")
def retrain_command(
    ctx: typer.Context,
    force: Annotated[bool, typer.Option("--force", help="Ignore cached steps.")] = False,
    skip_if_unchanged: Annotated[
        bool,
        typer.Option("--skip-if-unchanged", help="Exit early if the champion is current."),
    ] = False,
) -> None:
    """Run the retrain flow in-process (Prefect's ephemeral API unless PREFECT_API_URL is set).

    Exit code 0 when the flow completed, whether the gate promoted or rejected the model;
    non-zero when a step failed (validation included), with the cause in the last lines.
    """
    try:
        summary = retrain_with(settings(ctx), force=force, skip_if_unchanged=skip_if_unchanged)
    except RatchetError as error:
        err_console.print(Panel(failure_lines(error), title="retrain failed", style="red"))
        raise
    console.print(Panel(summary_table(summary), title="retrain summary"))


@command(commands, "deploy")
def deploy_command(ctx: typer.Context) -> None:
    """Deploy retrain-nightly, retrain-on-demand (with its drift and feedback triggers) and
    the hourly monitor (prefect.yaml) to a Prefect server.

    Needs PREFECT_API_URL (or tracking.prefect_api_url). Creates the process work pool
    and the one-retrain-at-a-time concurrency limit, then runs `prefect deploy --all`.
    Start a worker with: prefect worker start --pool ratchet-process
    """
    resolved, paths = load(ctx)
    if not os.environ.get("PREFECT_API_URL"):
        raise RatchetError(
            "ratchet deploy needs a Prefect server: set PREFECT_API_URL "
            "(e.g. http://127.0.0.1:4200/api after `prefect server start`)"
        )
    deploy_to_server(resolved, paths.project_root)
    console.print(
        "deployed retrain-nightly, retrain-on-demand (triggered by ratchet.drift.detected "
        "and ratchet.feedback.ready) and monitor (hourly); start a worker with"
    )
    console.print(f"  prefect worker start --pool {PROCESS_POOL}")


@command(commands, "demo")
def demo_command(ctx: typer.Context) -> None:
    """Retrain with the task's demo profile (SST-2 by default; `ratchet --model conll demo`
    for a token classifier), then serve one request from the Bento.

    --config files given too are merged over the demo profile."""
    given = settings(ctx)
    profile = DEMO_PROFILES[given.load()[0].data.task]
    demo = Settings(given.params, [profile, *given.config_files], given.overrides, given.model)
    started = time.perf_counter()
    summary = retrain_with(demo)
    console.print(Panel(summary_table(summary), title="retrain summary"))
    console.print(f"retrain finished in {time.perf_counter() - started:.0f} s")
    smoke_test_serving(demo)


def deploy_to_server(config: Any, project_root: Path) -> None:
    """Work pool + concurrency limit + `prefect deploy --all` from prefect.yaml."""
    from prefect.client.orchestration import get_client

    from flows.slots import concurrency_limit_name, ensure_concurrency_limit

    ensure_concurrency_limit(concurrency_limit_name(config))
    with get_client(sync_client=True) as client:
        from prefect.client.schemas.actions import WorkPoolCreate
        from prefect.exceptions import ObjectAlreadyExists

        with contextlib.suppress(ObjectAlreadyExists):
            client.create_work_pool(WorkPoolCreate(name=PROCESS_POOL, type="process"))
    prefect = Path(sys.executable).with_name("prefect")
    completed = subprocess.run(
        [str(prefect), "--no-prompt", "deploy", "--all"],
        cwd=project_root,
        env={**os.environ, "RATCHET_PROJECT_DIR": str(project_root)},
        capture_output=True,
        text=True,
        check=False,
    )
    if completed.returncode != 0:
        raise RatchetError(
            f"prefect deploy failed:\n{completed.stdout[-2000:]}{completed.stderr[-2000:]}"
        )


def wait_until_ready(base_url: str, timeout_seconds: float, headers: dict[str, str]) -> None:
    """Poll ``/readyz`` until the server has loaded its model."""
    from components.waiting import wait_for_http

    try:
        wait_for_http(f"{base_url}/readyz", timeout_seconds, headers=headers, interval_s=1)
    except TimeoutError:
        raise RatchetError(
            f"the server at {base_url} was not ready after {timeout_seconds:.0f} s"
        ) from None


def smoke_test_serving(given: Settings) -> None:
    """Start `ratchet serve` briefly, classify two sentences, print the curl to use.

    The server gets the same profiles and overrides as the run, so it binds the host and
    port polled here (``--set serving.port=3100`` moves both)."""
    from components.config.overrides import split_secret_overrides
    from serving.middleware import configured_api_key

    config, paths = given.load()
    port = config.serving.port
    # Secrets travel in the server's environment, not on its command line (ps shows that).
    overrides, secret_environment = split_secret_overrides(given.overrides)
    settings_options = [f"--config={profile}" for profile in given.config_files]
    settings_options += [f"--set={override}" for override in overrides]
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "cli",
            "serve",
            "--params",
            str(given.params_file),
            *settings_options,
        ],
        env={**secret_environment, **os.environ},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        base_url = f"http://{config.serving.host}:{port}"
        api_key = configured_api_key(config.serving, paths.project_root)
        headers = {"X-API-Key": api_key} if api_key else {}
        wait_until_ready(base_url, timeout_seconds=120, headers=headers)
        import httpx

        endpoint, texts = SMOKE_REQUESTS[config.data.task]
        response = httpx.post(
            f"{base_url}/{endpoint}", json={"texts": texts}, headers=headers, timeout=30
        )
        response.raise_for_status()
        console.print("smoke request against the served champion:")
        console.print_json(response.text)
    finally:
        server.terminate()
        server.wait(timeout=30)
    model = "" if given.model in (None, "default") else f" --model {given.model}"
    console.print(f"\nserve it yourself with:  .venv/bin/ratchet{model} serve")
    console.print(
        f"then:  curl -s -X POST {base_url}/{endpoint} -H 'content-type: application/json' "
        f"""-d '{{"texts": ["{texts[0]}"]}}'"""
    )
