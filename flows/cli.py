"""The ``ratchet`` command line.

Each command is a few lines: load the one configuration, set up the environment, call
into ``flows/`` or ``components/``. Typed ``RatchetError``s end the command with their
message and a non-zero exit code, never a traceback.

    ratchet --help
    ratchet config show --set train.lr=1e-4
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, TypeVar

import typer
from rich.console import Console
from rich.syntax import Syntax

from components.config import RatchetConfig, load_config
from components.errors import RatchetError
from components.logs import setup_logging
from components.state import ProjectPaths, configure_environment

app = typer.Typer(
    help="Ratchet: validate, version, pretrain, fine-tune, evaluate, gate and serve "
    "transformer text classifiers. Every command reads params.yaml.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
config_app = typer.Typer(help="Inspect the resolved configuration.", no_args_is_help=True)
app.add_typer(config_app, name="config")

console = Console()
err_console = Console(stderr=True)

ParamsOption = Annotated[
    Path,
    typer.Option("--params", help="Base parameters file (the one DVC reads)."),
]
ConfigOption = Annotated[
    list[Path] | None,
    typer.Option("--config", "-c", help="YAML merged over params.yaml; repeatable."),
]
SetOption = Annotated[
    list[str] | None,
    typer.Option("--set", "-s", help="Override one key, e.g. --set train.lr=1e-4; repeatable."),
]

T = TypeVar("T")


def load_settings(
    params: Path, config_files: list[Path] | None, overrides: list[str] | None
) -> tuple[RatchetConfig, ProjectPaths]:
    """Resolve the configuration and project paths, and prepare the environment."""
    config = load_config(params, config_files or [], overrides or [])
    paths = ProjectPaths.discover(params.resolve().parent if params.exists() else None)
    configure_environment(config, paths)
    return config, paths


def run_command(action: Callable[[], T]) -> T:
    """Run a command body, turning user-facing errors into a message and an exit code."""
    try:
        return action()
    except RatchetError as error:
        err_console.print(f"[bold red]error:[/] {error}", highlight=False, markup=True)
        raise typer.Exit(code=error.exit_code) from error


@app.callback()
def main_callback(
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Debug logging.")] = False,
) -> None:
    setup_logging(logging.DEBUG if verbose else logging.INFO)


@config_app.command("show")
def config_show(
    params: ParamsOption = Path("params.yaml"),
    config: ConfigOption = None,
    set_: SetOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of YAML.")] = False,
) -> None:
    """Print the resolved configuration with all overrides applied."""

    def show() -> None:
        resolved, paths = load_settings(params, config, set_)
        if as_json:
            typer.echo(resolved.model_dump_json(indent=2))
            return
        console.print(Syntax(resolved.to_yaml(), "yaml", theme="ansi_dark", word_wrap=True))
        console.print(f"# state folder: {paths.state_dir}", highlight=False)

    run_command(show)


_registered = False


def get_app() -> typer.Typer:
    """The app with every command group registered (tests call this too)."""
    global _registered
    if not _registered:
        # One module per pipeline area adds its commands through ``register``. Each
        # imports heavy libraries (torch, mlflow) inside its commands, so --help is fast.
        from flows import cli_data, cli_registry, cli_retrain, cli_serving, cli_train

        for module in (cli_data, cli_train, cli_registry, cli_serving, cli_retrain):
            module.register(app)
        _registered = True
    return app


def main() -> None:
    get_app()(prog_name="ratchet")


if __name__ == "__main__":
    main()
