"""`ratchet pipeline`: the pipeline declaration (components/pipeline.py) and its dvc.yaml.

ratchet pipeline dvc-yaml            # regenerate every model's dvc.yaml (root, pipelines/*)
ratchet pipeline dvc-yaml --check    # exit non-zero when one differs (CI)
ratchet --model conll pipeline dvc-yaml   # that model's alone
ratchet pipeline show                # the stages, in order, with their inputs and outputs
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

from cli.options import Settings, command, console, settings

pipeline_app = typer.Typer(help="The pipeline declared once: stages, inputs, outputs, dvc.yaml.")
GROUPS = {"pipeline": pipeline_app}


@command(pipeline_app, "dvc-yaml")
def dvc_yaml(
    ctx: typer.Context,
    check: Annotated[
        bool, typer.Option("--check", help="Only compare; exit 2 when a dvc.yaml differs.")
    ] = False,
    output: Annotated[
        Path | None,
        typer.Option("--output", help="Write this one file (with --code-root) instead."),
    ] = None,
    code_root: Annotated[
        str,
        typer.Option(
            "--code-root",
            help="With --output: the project root as seen from the output's folder (../.. "
            "for pipelines/<name>/dvc.yaml), so source dependencies point back at it.",
        ),
    ] = ".",
) -> None:
    """Write dvc.yaml from the pipeline declared in components/pipeline.py: every model's
    (the project root's and each pipelines/NAME/'s), or --model's alone."""
    from components.pipeline import check_dvc_yaml, write_dvc_yaml

    targets = [(output, code_root)] if output else model_dvc_yamls(settings(ctx))
    for target, root in targets:
        if check:
            check_dvc_yaml(target, code_root=root)
            console.print(f"{target} matches the pipeline declaration", highlight=False)
        elif write_dvc_yaml(target, code_root=root):
            console.print(f"wrote {target}", highlight=False)
        else:
            console.print(f"{target} is up to date", highlight=False)


def model_dvc_yamls(given: Settings) -> list[tuple[Path, str]]:
    """``(dvc.yaml, code root seen from it)`` of the model ``--model`` names, else of
    every model of the project."""
    from components.models import model_folders, project_root_of

    params_file = given.params_file
    root = project_root_of(params_file)
    folders = [params_file.resolve().parent]
    if not given.model:
        folders += [folder.resolve() for folder in model_folders(root)]
    return [
        (folder / "dvc.yaml", Path(os.path.relpath(root, folder)).as_posix())
        for folder in dict.fromkeys(folders)  # in order, once each
    ]


@command(pipeline_app, "show")
def show(ctx: typer.Context) -> None:
    """List the stages in the order they run, with what each reads and writes."""
    from components.pipeline import PIPELINE

    for stage in PIPELINE.stages:
        reads = ", ".join(dep.path for dep in stage.deps if not dep.is_code)
        writes = ", ".join(out.path for out in stage.outs)
        console.print(
            f"{stage.name} ({stage.group}): `{stage.cmd}`; reads {reads}; writes {writes}",
            highlight=False,
            markup=False,
        )
