"""`ratchet build` and `ratchet serve`: package the registry champion as a Bento and run it.

ratchet build --alias champion     # MLflow model -> BentoML model store -> Bento
ratchet serve --port 3000          # bentoml serve <latest Bento> on 127.0.0.1
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated

import typer

from components.config import RatchetConfig
from components.errors import ServingError
from components.state import ProjectPaths
from flows.cli import ConfigOption, ParamsOption, SetOption, load_settings, run_command

API_KEY_ENV = "RATCHET_API_KEY"


def bento_name(config: RatchetConfig) -> str:
    from serving.build import store_name

    return f"{store_name(config.registry.model_name)}-service"


def serve_command(bento_tag: str, host: str, port: int) -> list[str]:
    """The ``bentoml serve`` command line for a built Bento."""
    bentoml_cli = Path(sys.executable).with_name("bentoml")
    launcher = [str(bentoml_cli)] if bentoml_cli.exists() else [sys.executable, "-m", "bentoml"]
    return [*launcher, "serve", bento_tag, "--host", host, "--port", str(port)]


def serve_environment(config: RatchetConfig, paths: ProjectPaths) -> dict[str, str]:
    """The server's environment: BentoML home in the state folder, the API key if any."""
    env = dict(os.environ)
    env.setdefault("BENTOML_HOME", str(paths.bentoml_home))
    if config.serving.api_key and API_KEY_ENV not in env:
        env[API_KEY_ENV] = config.serving.api_key
    return env


def register(app: typer.Typer) -> None:
    """Add this area's commands to the `ratchet` app."""

    @app.command("build")
    def build(
        alias: Annotated[
            str | None, typer.Option(help="Registry alias to package (default serving.alias).")
        ] = None,
        params: ParamsOption = Path("params.yaml"),
        config: ConfigOption = None,
        set_: SetOption = None,
    ) -> None:
        """Build a Bento for the registry version behind an alias (default: champion)."""

        def body() -> None:
            from serving.build import build_bento

            resolved, paths = load_settings(params, config, set_)
            tag = build_bento(resolved, paths, alias=alias or resolved.serving.alias)
            typer.echo(tag)

        run_command(body)

    @app.command("serve")
    def serve(
        port: Annotated[int | None, typer.Option(help="Port (default serving.port).")] = None,
        bento: Annotated[
            str | None, typer.Option(help="Bento tag to run (default: the latest built).")
        ] = None,
        params: ParamsOption = Path("params.yaml"),
        config: ConfigOption = None,
        set_: SetOption = None,
    ) -> None:
        """Run a built Bento with `bentoml serve` on serving.host (127.0.0.1)."""

        def body() -> None:
            resolved, paths = load_settings(params, config, set_)
            tag = bento or f"{bento_name(resolved)}:latest"
            command = serve_command(tag, resolved.serving.host, port or resolved.serving.port)
            typer.echo(" ".join(command), err=True)
            sys.stderr.flush()
            # Become the server process, so signals (Ctrl-C, SIGTERM) reach it directly.
            try:
                os.execve(command[0], command, serve_environment(resolved, paths))
            except OSError as error:
                raise ServingError(f"could not start bentoml serve: {error}") from error

        run_command(body)
