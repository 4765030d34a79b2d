"""`ratchet new` and `ratchet models`: the models of one project (docs/models.md).

ratchet new conll --task token-classification --data ../shared/data/conll2003
ratchet models                     # name, task, registered model, champion version
ratchet --model conll retrain      # every command works on the model --model names
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, cast

import typer
from rich.table import Table

from cli.options import JsonOption, command, console, load, settings
from components.config import TASKS, Task

commands = typer.Typer()
GROUPS = {None: commands}


@command(commands, "new")
def new_model(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="The model's name: pipelines/NAME/, ratchet-NAME.")],
    task: Annotated[
        str, typer.Option("--task", help=f"What the model does: {' or '.join(TASKS)}.")
    ],
    data: Annotated[
        str,
        typer.Option(
            "--data",
            help="The data: a file or folder (relative to where you run this), or hf:<name>.",
        ),
    ],
    text_column: Annotated[
        str | None, typer.Option("--text-column", help="Tabular data: the text's column.")
    ] = None,
    label_column: Annotated[
        str | None, typer.Option("--label-column", help="Tabular data: the label's column.")
    ] = None,
    base: Annotated[
        str | None,
        typer.Option("--base", help="model.base: a Hugging Face id or a local model folder."),
    ] = None,
    force: Annotated[
        bool, typer.Option("--force", help="Rewrite an existing model's params and dvc.yaml.")
    ] = False,
) -> None:
    """Add a model to the project: write pipelines/NAME/params.yaml (the project's
    params.yaml with this task's defaults and this data; --config and --set are written
    into it too) and its dvc.yaml, after validating the data once."""
    from components.errors import ConfigError
    from components.models import NewModel, create_model

    if task not in TASKS:
        raise ConfigError(f"--task {task!r}: choose one of {', '.join(TASKS)}")
    given = settings(ctx)
    request = NewModel(name, cast(Task, task), data, Path.cwd(), text_column, label_column, base)
    created = create_model(given.params, request, given.config_files, given.overrides, force=force)
    paths, config, validation = created.paths, created.config, created.validation
    rows = ", ".join(f"{split}={count}" for split, count in validation.row_counts.items())
    console.print(
        f"created model {name} in {paths.model_root} ({config.data.task}, registered as "
        f"{config.registry.model_name}); validation passed: {len(validation.checks)} "
        f"expectations on {validation.source} ({rows})",
        highlight=False,
    )
    console.print("next:", highlight=False)
    for line in next_steps(name):
        console.print(f"  {line}", highlight=False, markup=False)


def next_steps(name: str) -> list[str]:
    """What to run after ``ratchet new NAME``."""
    return [
        f"ratchet --model {name} retrain      # version, train, evaluate, register, gate",
        f"ratchet --model {name} registry list",
        f"ratchet --model {name} serve        # its champion's Bento",
        f"(or: cd {Path('pipelines') / name} && dvc repro   # the DVC stages alone)",
    ]


@command(commands, "models")
def list_project_models(ctx: typer.Context, as_json: JsonOption = False) -> None:
    """List the project's models: name, task, registered model and champion version."""
    from components import registry
    from components.models import list_models, project_root_of

    load(ctx)  # the shared state: its MLflow store
    client = registry.make_client()
    rows: list[dict[str, Any]] = []
    root = project_root_of(settings(ctx).params)
    for entry in list_models(root):
        champion = registry.aliases(client, entry.registered_name).get(registry.CHAMPION)
        rows.append(
            {
                "name": entry.name,
                "task": entry.task,
                "registered_name": entry.registered_name,
                "champion": champion,
                "params": str(entry.params_file.relative_to(root)),
            }
        )
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    table = Table("model", "task", "registered model", "champion", "params")
    for row in rows:
        table.add_row(*(str(row[key] or "-") for key in row))
    console.print(table)
