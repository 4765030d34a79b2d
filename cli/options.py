"""What every `ratchet` command shares, declared once.

The settings options ``--model``, ``--params``, ``--config`` (repeatable) and ``--set``
(repeatable) are read by the root callback (``ratchet --model conll --set train.lr=1e-4
retrain``) and, through ``command``, after every command too, as the docs show them
(``ratchet retrain --config configs/demo.yaml --set train.epochs=3``). ``--model NAME``
picks the project's model ``pipelines/NAME/params.yaml`` instead of the default model's
``params.yaml`` (docs/models.md). A command's own ``--model`` and ``--params`` replace the
root's; its ``--config`` files and ``--set`` overrides come after the root's. Either way
they land in one ``Settings`` object in the Typer context (``ctx.obj``), which loads the
configuration once, when a command first asks for it: so ``--help`` works without a valid
params.yaml.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console

from components.config import RatchetConfig, load_config
from components.errors import RatchetError
from components.state import ProjectPaths, configure_environment

DEFAULT_PARAMS = Path("params.yaml")

ModelOption = Annotated[
    str | None,
    typer.Option(
        "--model",
        help="The project's model to work on: pipelines/NAME/params.yaml (see `ratchet "
        "models`); default: the project's default model, params.yaml.",
    ),
]
ParamsOption = Annotated[
    Path | None,
    typer.Option("--params", help="Base parameters file (the one DVC reads); default params.yaml."),
]
ConfigOption = Annotated[
    list[Path] | None,
    typer.Option("--config", "-c", help="YAML merged over params.yaml; repeatable."),
]
SetOption = Annotated[
    list[str] | None,
    typer.Option("--set", "-s", help="Override one key, e.g. --set train.lr=1e-4; repeatable."),
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")]

console = Console()
err_console = Console(stderr=True)

T = TypeVar("T")
Command = Callable[..., None]


def load_settings(
    params: Path, config_files: list[Path] | None, overrides: list[str] | None
) -> tuple[RatchetConfig, ProjectPaths]:
    """Resolve the configuration and project paths, and prepare the environment."""
    config = load_config(params, config_files or [], overrides or [])
    paths = ProjectPaths.discover(params.resolve().parent if params.exists() else None)
    configure_environment(config, paths)
    return config, paths


@dataclass
class Settings:
    """The settings options of one `ratchet` invocation, and what they resolve to."""

    params: Path = DEFAULT_PARAMS
    config_files: list[Path] = field(default_factory=list)
    overrides: list[str] = field(default_factory=list)
    model: str | None = None
    _loaded: tuple[RatchetConfig, ProjectPaths] | None = field(
        default=None, init=False, repr=False, compare=False
    )

    def extended(
        self,
        params: Path | None,
        config_files: list[Path] | None,
        overrides: list[str] | None,
        model: str | None = None,
    ) -> Settings:
        """These settings with more options: ``params`` and ``model`` replace, the rest
        come after."""
        if params is None and not config_files and not overrides and model is None:
            return self
        return Settings(
            params or self.params,
            [*self.config_files, *(config_files or [])],
            [*self.overrides, *(overrides or [])],
            model or self.model,
        )

    @property
    def params_file(self) -> Path:
        """The ``params.yaml`` these settings read: ``--model``'s, else ``--params``.

        Raises:
            ConfigError: ``--model`` names no model of the project (the message lists them).
        """
        from components.models import model_params_file

        return model_params_file(self.params, self.model)

    def load(self) -> tuple[RatchetConfig, ProjectPaths]:
        """The configuration and project paths, loaded on the first call only.

        Raises:
            ConfigError: a file is missing or malformed, or an override names an unknown
                key or a wrong value.
        """
        if self._loaded is None:
            self._loaded = load_settings(self.params_file, self.config_files, self.overrides)
        return self._loaded


def settings(ctx: typer.Context) -> Settings:
    """The settings this command runs with (the defaults outside a `ratchet` app)."""
    found = ctx.find_object(Settings)
    return found if found is not None else Settings()


def load(ctx: typer.Context) -> tuple[RatchetConfig, ProjectPaths]:
    """Shorthand for ``settings(ctx).load()``."""
    return settings(ctx).load()


def run_command(action: Callable[[], T]) -> T:
    """Run a command body, turning user-facing errors into a message and an exit code."""
    try:
        return action()
    except RatchetError as error:
        err_console.print(f"[bold red]error:[/] {error}", highlight=False, markup=True)
        raise typer.Exit(code=error.exit_code) from error


SETTINGS_PARAMETERS = [
    inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=None, annotation=annotation)
    for name, annotation in (
        ("settings_model", ModelOption),
        ("settings_params", ParamsOption),
        ("settings_config", ConfigOption),
        ("settings_set", SetOption),
    )
]


def with_settings(function: Command) -> Command:
    """``function`` with the settings options added after its own, merged into ``ctx.obj``
    before it runs, and its ``RatchetError``s turned into a message and an exit code.

    ``function`` takes ``ctx: typer.Context`` and reads the settings with ``load(ctx)``.
    """
    signature = inspect.signature(function, eval_str=True)
    if "ctx" not in signature.parameters:
        raise TypeError(f"{function.__name__} must take ctx: typer.Context")

    @functools.wraps(function)
    def wrapper(**arguments: Any) -> None:
        ctx: typer.Context = arguments["ctx"]
        model, params, config_files, overrides = (
            arguments.pop(p.name) for p in SETTINGS_PARAMETERS
        )
        ctx.obj = settings(ctx).extended(params, config_files, overrides, model)
        run_command(lambda: function(**arguments))

    parameters = [*signature.parameters.values(), *SETTINGS_PARAMETERS]
    wrapper.__signature__ = signature.replace(parameters=parameters)  # type: ignore[attr-defined]
    return wrapper


def command(group: typer.Typer, name: str, help: str | None = None) -> Callable[[Command], Command]:
    """Register the decorated function as command ``name`` of ``group``, with the settings
    options (``with_settings``); the function itself is returned unchanged. ``help``
    replaces the docstring's summary in ``--help``."""

    def register(function: Command) -> Command:
        group.command(name, help=help)(with_settings(function))
        return function

    return register
