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

from cli.options import command, load
from components.config import RatchetConfig
from components.errors import ServingError
from components.state import ProjectPaths


def serve_command(bento_tag: str, host: str, port: int) -> list[str]:
    """The ``bentoml serve`` command line for a built Bento."""
    bentoml_cli = Path(sys.executable).with_name("bentoml")
    launcher = [str(bentoml_cli)] if bentoml_cli.exists() else [sys.executable, "-m", "bentoml"]
    return [*launcher, "serve", bento_tag, "--host", host, "--port", str(port)]


def serve_environment(config: RatchetConfig, paths: ProjectPaths) -> dict[str, str]:
    """The server's environment: BentoML home in the state folder, the API key if any.

    ``RATCHET_API_KEY`` / ``RATCHET_API_KEY_FILE`` already set win; else the server gets
    ``serving.api_key`` as ``RATCHET_API_KEY``, or ``serving.api_key_file`` as
    ``RATCHET_API_KEY_FILE`` (checked readable here, read by the server at start).

    Raises:
        ServingError: an empty ``RATCHET_API_KEY``, or an unreadable or empty key file.
    """
    from serving.middleware import (
        API_KEY_ENV,
        API_KEY_FILE_ENV,
        api_key_from_environment,
        configured_api_key,
    )
    from serving.traffic_log import traffic_log_environment

    env = dict(os.environ)
    env.setdefault("BENTOML_HOME", str(paths.bentoml_home))
    for name, value in traffic_log_environment(config, paths.model_state_dir).items():
        env.setdefault(name, value)  # the inference log's settings (serving/traffic_log.py)
    if api_key_from_environment(env) is not None:
        return env
    key = configured_api_key(config.serving, paths.project_root)
    if config.serving.api_key is None and config.serving.api_key_file:
        env[API_KEY_FILE_ENV] = str(paths.resolve(config.serving.api_key_file))
    elif key is not None:
        env[API_KEY_ENV] = key
    return env


def refuse_without_required_key(bento_tag: str, environment: dict[str, str]) -> None:
    """Stop before starting a Bento built with an API key when no key will reach it (the
    Bento's own start-up check would refuse too, but only after loading the model).

    Raises:
        ServingError: the Bento records ``auth_required`` and ``environment`` has no key.
    """
    import bentoml
    from bentoml.exceptions import NotFound

    from serving.middleware import API_KEY_ENV, API_KEY_FILE_ENV, missing_key_message

    try:
        arguments = bentoml.bentos.get(bento_tag).info.args
    except NotFound:
        return  # bentoml serve says so, naming the store it looked in
    has_key = environment.get(API_KEY_ENV) or environment.get(API_KEY_FILE_ENV)
    if arguments.get("auth_required") and not has_key:
        raise ServingError(missing_key_message())


def alias_bento(config: RatchetConfig, paths: ProjectPaths) -> str:
    """The checked Bento of the version that holds ``serving.alias`` now (built if missing),
    never ``:latest``: after a rollback the newest Bento is the demoted model's."""
    from serving.build import resolve_alias
    from serving.release import release_version

    holder = resolve_alias(config.registry.model_name, config.serving.alias)
    tag = release_version(config, paths, holder["version"])
    typer.echo(f"serving v{holder['version']} ({config.serving.alias}): {tag}", err=True)
    return tag


commands = typer.Typer()
GROUPS = {None: commands}


@command(commands, "build")
def build(
    ctx: typer.Context,
    alias: Annotated[
        str | None, typer.Option(help="Registry alias to package (default serving.alias).")
    ] = None,
    version: Annotated[
        str | None, typer.Option("--version", help="Registry version to package instead.")
    ] = None,
) -> None:
    """Build a Bento for a registry version, or the one behind an alias (default: champion)."""
    from serving.build import bentoml_home, build_bento, use_bentoml_home

    resolved, paths = load(ctx)
    with use_bentoml_home(bentoml_home(paths)):
        tag = build_bento(resolved, paths, alias=alias or resolved.serving.alias, version=version)
    typer.echo(tag)


@command(commands, "serve")
def serve(
    ctx: typer.Context,
    port: Annotated[int | None, typer.Option(help="Port (default serving.port).")] = None,
    bento: Annotated[
        str | None,
        typer.Option(
            help="Bento tag to run (default: the Bento of the version holding serving.alias)."
        ),
    ] = None,
) -> None:
    """Run the Bento of the version holding serving.alias (champion) on serving.host."""
    resolved, paths = load(ctx)
    tag = bento or alias_bento(resolved, paths)
    environment = serve_environment(resolved, paths)
    refuse_without_required_key(tag, environment)
    command_line = serve_command(tag, resolved.serving.host, port or resolved.serving.port)
    typer.echo(" ".join(command_line), err=True)
    sys.stderr.flush()
    # Become the server process, so signals (Ctrl-C, SIGTERM) reach it directly.
    try:
        os.execve(command_line[0], command_line, environment)
    except OSError as error:
        raise ServingError(f"could not start bentoml serve: {error}") from error
