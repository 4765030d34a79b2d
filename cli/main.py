"""The ``ratchet`` command line.

Each command is a few lines: read the one configuration from the Typer context, call into
``flows/`` or ``components/``. Typed ``RatchetError``s end the command with their message
and a non-zero exit code, never a traceback. The command groups live beside this module
(data, train, registry, serving, retrain); each imports heavy libraries (torch, mlflow)
inside its commands, so ``--help`` is fast.

    ratchet --help
    ratchet config show --set train.lr=1e-4
"""

from __future__ import annotations

import logging
from typing import Annotated

import typer
from rich.syntax import Syntax

from cli import data, models, monitor, pipeline, registry, retrain, serving, train
from cli.options import (
    ConfigOption,
    ModelOption,
    ParamsOption,
    SetOption,
    Settings,
    command,
    console,
    load,
)
from components.logs import setup_logging

app = typer.Typer(
    help="Ratchet: validate, version, pretrain, fine-tune, evaluate, gate and serve "
    "transformer text and token classifiers. Every command reads params.yaml, or with "
    "--model NAME the project's model pipelines/NAME/params.yaml.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
config_app = typer.Typer(help="Inspect the resolved configuration.", no_args_is_help=True)


@app.callback()
def main_callback(
    ctx: typer.Context,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Debug logging.")] = False,
    model: ModelOption = None,
    params: ParamsOption = None,
    config: ConfigOption = None,
    set_: SetOption = None,
) -> None:
    setup_logging(logging.DEBUG if verbose else logging.INFO)
    ctx.obj = Settings().extended(params, config, set_, model)


@command(config_app, "show")
def config_show(
    ctx: typer.Context,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of YAML.")] = False,
) -> None:
    """Print the resolved configuration with all overrides applied."""
    resolved, paths = load(ctx)
    if as_json:
        typer.echo(resolved.model_dump_json(indent=2))
        return
    console.print(Syntax(resolved.to_yaml(), "yaml", theme="ansi_dark", word_wrap=True))
    console.print(f"# model: {paths.model_name} ({paths.model_root})", highlight=False)
    console.print(f"# state folder: {paths.state_dir}", highlight=False)


app.add_typer(config_app, name="config")
for group in (data, train, registry, serving, retrain, pipeline, monitor, models):
    for name, sub_app in group.GROUPS.items():
        app.add_typer(sub_app, name=name)


def get_app() -> typer.Typer:
    """The app with every command group registered (tests call this too)."""
    return app


def main() -> None:
    app(prog_name="ratchet")


if __name__ == "__main__":
    main()
