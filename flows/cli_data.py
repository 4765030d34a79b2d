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
from pathlib import Path
from typing import Annotated

import typer

from components.locks import data_lock
from flows.cli import (
    ConfigOption,
    ParamsOption,
    SetOption,
    console,
    load_settings,
    run_command,
)

DataOption = Annotated[
    str | None,
    typer.Option("--data", help="File, folder or hf:<name>; default data.source."),
]
STAGES = ("ingest", "validate", "prepare")


def register(app: typer.Typer) -> None:
    """Add this area's commands to the `ratchet` app."""
    app.command("ingest")(ingest)
    app.command("validate")(validate)
    app.command("prepare")(prepare)
    data_app = typer.Typer(help="Version data with DVC: push, pull, commit, lineage.")
    data_app.command("push")(data_push)
    data_app.command("pull")(data_pull)
    data_app.command("commit")(data_commit)
    data_app.command("lineage")(data_lineage)
    app.add_typer(data_app, name="data")


def ingest(
    data: DataOption = None,
    params: ParamsOption = Path("params.yaml"),
    config: ConfigOption = None,
    set_: SetOption = None,
) -> None:
    """Copy the data source byte-for-byte into data/raw (DVC tracks it as stage `ingest`)."""

    def body() -> None:
        from components.ingest import run_ingest

        settings, paths = load_settings(params, config, set_)
        with data_lock(paths.raw_dir.parent):
            files = run_ingest(data or settings.data.source, paths)
        console.print(f"data/raw: {', '.join(str(f) for f in files)}", highlight=False)

    run_command(body)


def validate(
    data: DataOption = None,
    report: Annotated[
        Path | None, typer.Option("--report", help="Write the JSON summary here on success.")
    ] = None,
    params: ParamsOption = Path("params.yaml"),
    config: ConfigOption = None,
    set_: SetOption = None,
) -> None:
    """Run the Great Expectations data suite; exit non-zero listing every failure."""

    def body() -> None:
        from components.validate import run_validation

        settings, paths = load_settings(params, config, set_)
        with data_lock(paths.raw_dir.parent):
            result = run_validation(data or settings.data.source, settings.data, paths, report)
        rows = ", ".join(f"{name}={count}" for name, count in result.row_counts.items())
        console.print(
            f"validation passed: {len(result.checks)} expectations on {result.source} "
            f"({rows}); Data Docs: {result.docs_index}",
            highlight=False,
        )

    run_command(body)


def prepare(
    data: DataOption = None,
    skip_validation: Annotated[
        bool,
        typer.Option("--skip-validation", help="Trust a validation that already ran."),
    ] = False,
    params: ParamsOption = Path("params.yaml"),
    config: ConfigOption = None,
    set_: SetOption = None,
) -> None:
    """Validate, then write the seeded, stratified train/validation/test splits."""

    def body() -> None:
        from components.prepare import run_prepare

        settings, paths = load_settings(params, config, set_)
        source = data or settings.data.source
        with data_lock(paths.raw_dir.parent):
            manifest = run_prepare(source, settings.data, paths, validate=not skip_validation)
        for name, split in manifest["splits"].items():
            console.print(
                f"{name}: {split['rows']} rows {split['label_counts']} md5 {split['md5']}",
                highlight=False,
            )

    run_command(body)


def data_push(
    params: ParamsOption = Path("params.yaml"),
    config: ConfigOption = None,
    set_: SetOption = None,
) -> None:
    """Push DVC-tracked data to the remote (tracking.dvc_remote_url or the state folder)."""
    run_command(lambda: transfer_data("push", params, config, set_))


def data_pull(
    params: ParamsOption = Path("params.yaml"),
    config: ConfigOption = None,
    set_: SetOption = None,
) -> None:
    """Pull DVC-tracked data from the remote into this workspace."""
    run_command(lambda: transfer_data("pull", params, config, set_))


def transfer_data(
    direction: str, params: Path, config: list[Path] | None, set_: list[str] | None
) -> None:
    """Push or pull through the remote this configuration names."""
    from components import versioning
    from components.secrets import mask_uri_credentials
    from components.state import dvc_remote_url

    settings, paths = load_settings(params, config, set_)
    remote = dvc_remote_url(settings, paths)
    if direction == "push":
        versioning.push(paths.project_root, remote)
    else:
        with data_lock(paths.raw_dir.parent):
            versioning.pull(paths.project_root, remote)
    console.print(f"{direction}: done ({mask_uri_credentials(remote)})", highlight=False)


def data_commit(
    params: ParamsOption = Path("params.yaml"),
    config: ConfigOption = None,
    set_: SetOption = None,
) -> None:
    """Record data/raw and data/prepared made outside `dvc repro` in dvc.lock."""

    def body() -> None:
        from components.versioning import commit_stage_outputs

        _, paths = load_settings(params, config, set_)
        with data_lock(paths.raw_dir.parent):
            commit_stage_outputs(paths.project_root, STAGES)
        console.print(f"committed stages {', '.join(STAGES)}", highlight=False)

    run_command(body)


def data_lineage(
    params: ParamsOption = Path("params.yaml"),
    config: ConfigOption = None,
    set_: SetOption = None,
) -> None:
    """Print the git commit, dirty flag and data md5s of this workspace as JSON."""

    def body() -> None:
        from components.lineage import workspace_lineage

        _, paths = load_settings(params, config, set_)
        typer.echo(json.dumps(workspace_lineage(paths.project_root), indent=2))

    run_command(body)
