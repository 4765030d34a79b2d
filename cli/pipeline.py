"""`ratchet pipeline`: the pipeline declaration (components/pipeline.py) and its dvc.yaml.

ratchet pipeline dvc-yaml            # regenerate dvc.yaml beside params.yaml
ratchet pipeline dvc-yaml --check    # exit non-zero when dvc.yaml differs (CI)
ratchet pipeline show                # the stages, in order, with their inputs and outputs
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from cli.options import command, console, settings

pipeline_app = typer.Typer(help="The pipeline declared once: stages, inputs, outputs, dvc.yaml.")
GROUPS = {"pipeline": pipeline_app}


@command(pipeline_app, "dvc-yaml")
def dvc_yaml(
    ctx: typer.Context,
    check: Annotated[
        bool, typer.Option("--check", help="Only compare; exit 2 when dvc.yaml differs.")
    ] = False,
    output: Annotated[
        Path | None,
        typer.Option("--output", help="Where to write; default dvc.yaml beside params.yaml."),
    ] = None,
    code_root: Annotated[
        str,
        typer.Option(
            "--code-root",
            help="The project root as seen from the output's folder (../.. for "
            "models/<name>/dvc.yaml), so source dependencies point back at it.",
        ),
    ] = ".",
) -> None:
    """Write dvc.yaml from the pipeline declared in components/pipeline.py."""
    from components.pipeline import check_dvc_yaml, write_dvc_yaml

    target = output or settings(ctx).params.resolve().parent / "dvc.yaml"
    if check:
        check_dvc_yaml(target, code_root=code_root)
        console.print(f"{target} matches the pipeline declaration", highlight=False)
    elif write_dvc_yaml(target, code_root=code_root):
        console.print(f"wrote {target}", highlight=False)
    else:
        console.print(f"{target} is up to date", highlight=False)


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
