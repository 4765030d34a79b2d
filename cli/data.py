"""`ratchet` commands for the data half of the pipeline; also the `cmd`s of dvc.yaml.

ratchet ingest                          # snapshot data.source into data/raw (stage ingest)
ratchet validate --data ../shared/data/sst2   # Great Expectations suite + Data Docs
ratchet prepare                         # validate, then write data/prepared
ratchet data push | pull | commit | lineage

Every command that writes data/ (or reads it while another could be writing it) holds
the data folder's lock (components/locks.py), so these commands, `dvc repro` and the
retrain flow take turns.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, TypeVar

import typer

from cli.options import command, console, load
from components.config import RatchetConfig
from components.locks import data_lock
from components.state import ProjectPaths

DataOption = Annotated[
    str | None,
    typer.Option("--data", help="File, folder or hf:<name>; default data.source."),
]

T = TypeVar("T")

commands = typer.Typer()
data_app = typer.Typer(help="Version data with DVC: push, pull, commit, lineage.")
GROUPS = {None: commands, "data": data_app}


DataStep = Callable[[str, RatchetConfig, ProjectPaths], T]


def on_source(ctx: typer.Context, data: str | None, tokens: DataStep[T], texts: DataStep[T]) -> T:
    """Run a data step on ``--data`` (default ``data.source``) while holding the data
    folder's lock: ``tokens`` for ``data.task`` token-classification, else ``texts``."""
    settings, paths = load(ctx)
    source = data or settings.data.source
    with data_lock(paths.raw_dir.parent):
        step = tokens if settings.data.task == "token-classification" else texts
        return step(source, settings, paths)


@command(commands, "ingest")
def ingest(ctx: typer.Context, data: DataOption = None) -> None:
    """Copy the data source byte-for-byte into data/raw (DVC tracks it as stage `ingest`)."""
    from components.ingest import formats_for_task, run_ingest

    settings, paths = load(ctx)
    formats = formats_for_task(settings.data.task)
    with data_lock(paths.raw_dir.parent):
        files = run_ingest(data or settings.data.source, paths, formats)
    console.print(f"data/raw: {', '.join(str(f) for f in files)}", highlight=False)


@command(commands, "validate")
def validate(
    ctx: typer.Context,
    data: DataOption = None,
    report: Annotated[
        Path | None, typer.Option("--report", help="Write the JSON summary here on success.")
    ] = None,
) -> None:
    """Run the Great Expectations data suite; exit non-zero listing every failure."""
    from components.token_validate import run_token_validation
    from components.validate import run_validation

    result = on_source(
        ctx,
        data,
        lambda source, config, paths: run_token_validation(source, config, paths, report),
        lambda source, config, paths: run_validation(source, config.data, paths, report),
    )
    rows = ", ".join(f"{name}={count}" for name, count in result.row_counts.items())
    console.print(
        f"validation passed: {len(result.checks)} expectations on {result.source} "
        f"({rows}); Data Docs: {result.docs_index}",
        highlight=False,
    )


@command(commands, "prepare")
def prepare(
    ctx: typer.Context,
    data: DataOption = None,
    skip_validation: Annotated[
        bool,
        typer.Option("--skip-validation", help="Trust a validation that already ran."),
    ] = False,
) -> None:
    """Validate, then write the seeded, stratified train/validation/test splits."""
    from components.prepare import run_prepare
    from components.token_prepare import run_token_prepare

    validate = not skip_validation
    manifest = on_source(
        ctx,
        data,
        lambda source, config, paths: run_token_prepare(source, config, paths, validate),
        lambda source, config, paths: run_prepare(source, config.data, paths, validate),
    )
    for name, split in manifest["splits"].items():
        counts = split.get("label_counts", split.get("entity_counts"))
        console.print(f"{name}: {split['rows']} rows {counts} md5 {split['md5']}", highlight=False)


@command(data_app, "push")
def data_push(ctx: typer.Context) -> None:
    """Push DVC-tracked data to the remote (tracking.dvc_remote_url or the state folder)."""
    transfer_data(ctx, "push")


@command(data_app, "pull")
def data_pull(ctx: typer.Context) -> None:
    """Pull DVC-tracked data from the remote into this workspace."""
    transfer_data(ctx, "pull")


def transfer_data(ctx: typer.Context, direction: str) -> None:
    """Push or pull through the remote this configuration names."""
    from components import versioning
    from components.secrets import mask_uri_credentials
    from components.state import dvc_remote_url

    settings, paths = load(ctx)
    remote = dvc_remote_url(settings, paths)
    if direction == "push":
        versioning.push(paths.model_root, remote)
    else:
        with data_lock(paths.raw_dir.parent):
            versioning.pull(paths.model_root, remote)
    console.print(f"{direction}: done ({mask_uri_credentials(remote)})", highlight=False)


@command(data_app, "commit")
def data_commit(ctx: typer.Context) -> None:
    """Record data/raw and data/prepared made outside `dvc repro` in dvc.lock."""
    from components.pipeline import PIPELINE
    from components.versioning import commit_stage_outputs

    _, paths = load(ctx)
    stages = PIPELINE.names("data")
    with data_lock(paths.raw_dir.parent):
        commit_stage_outputs(paths.model_root, stages)
    console.print(f"committed stages {', '.join(stages)}", highlight=False)


@command(data_app, "lineage")
def data_lineage(ctx: typer.Context) -> None:
    """Print the git commit, dirty flag and data md5s of this workspace as JSON."""
    from components.lineage import workspace_lineage

    _, paths = load(ctx)
    typer.echo(json.dumps(workspace_lineage(paths.model_root), indent=2))
