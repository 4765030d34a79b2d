"""`ratchet build` and `ratchet serve`: package the registry champion as a Bento and run it.

ratchet build --alias champion     # MLflow model -> BentoML model store -> Bento
ratchet serve --port 3000          # bentoml serve <the alias holder's Bento> on 127.0.0.1
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


def alias_bento(config: RatchetConfig, paths: ProjectPaths) -> str:
    """The checked Bento of the version that holds ``serving.alias`` now (built if missing),
    never ``:latest``: after a rollback the newest Bento is the demoted model's."""
    from serving.build import resolve_alias
    from serving.release import release_version

    holder = resolve_alias(config.registry.model_name, config.serving.alias)
    tag = release_version(config, paths, holder["version"])
    typer.echo(f"serving v{holder['version']} ({config.serving.alias}): {tag}", err=True)
    return tag


def register(app: typer.Typer) -> None:
    """Add this area's commands to the `ratchet` app."""

    @app.command("build")
    def build(
        alias: Annotated[
            str | None, typer.Option(help="Registry alias to package (default serving.alias).")
        ] = None,
        version: Annotated[
            str | None, typer.Option("--version", help="Registry version to package instead.")
        ] = None,
        params: ParamsOption = Path("params.yaml"),
        config: ConfigOption = None,
        set_: SetOption = None,
    ) -> None:
        """Build a Bento for a registry version, or the one behind an alias (default: champion)."""

        def body() -> None:
            from serving.build import bentoml_home, build_bento, use_bentoml_home

            resolved, paths = load_settings(params, config, set_)
            with use_bentoml_home(bentoml_home(paths)):
                tag = build_bento(
                    resolved, paths, alias=alias or resolved.serving.alias, version=version
                )
            typer.echo(tag)

        run_command(body)

    @app.command("serve")
    def serve(
        port: Annotated[int | None, typer.Option(help="Port (default serving.port).")] = None,
        bento: Annotated[
            str | None,
            typer.Option(
                help="Bento tag to run (default: the Bento of the version holding serving.alias)."
            ),
        ] = None,
        params: ParamsOption = Path("params.yaml"),
        config: ConfigOption = None,
        set_: SetOption = None,
    ) -> None:
        """Run the Bento of the version holding serving.alias (champion) on serving.host."""

        def body() -> None:
            resolved, paths = load_settings(params, config, set_)
            tag = bento or alias_bento(resolved, paths)
            command = serve_command(tag, resolved.serving.host, port or resolved.serving.port)
            typer.echo(" ".join(command), err=True)
            sys.stderr.flush()
            # Become the server process, so signals (Ctrl-C, SIGTERM) reach it directly.
            try:
                os.execve(command[0], command, serve_environment(resolved, paths))
            except OSError as error:
                raise ServingError(f"could not start bentoml serve: {error}") from error

        run_command(body)
