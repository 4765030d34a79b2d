"""`ratchet` commands for evaluation, the model registry and reproduction.

ratchet evaluate                       # models/finetuned + data/prepared -> metrics/ (DVC stage)
ratchet registry list [--json]         # versions, aliases, key metrics, data md5, created
ratchet registry show 3                # the model card of version 3
ratchet registry compare 2 3           # deltas, McNemar/bootstrap, confusion matrices, diffs
ratchet registry promote 3 --reason "..." [--force] [--by NAME]
ratchet registry rollback --reason "..."
ratchet registry approve 3 --reason "..." [--by NAME]   # with gate.require_approval
ratchet registry reject 3 --reason "..." [--by NAME]
ratchet registry history [--json]      # every alias move: from, to, kind, who, when, why
ratchet reproduce 3                    # rebuild version 3 from its lineage, diff metrics
ratchet ui                             # MLflow UI on 127.0.0.1 against the state folder store
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.columns import Columns
from rich.markdown import Markdown
from rich.table import Table

from cli.options import JsonOption, command, console, load

VersionArgument = Annotated[str, typer.Argument(help="Registered model version number.")]
ByOption = Annotated[
    str | None, typer.Option("--by", help="Who acts; default the current OS user.")
]
ReasonOption = Annotated[str, typer.Option("--reason", help="Why; recorded on the version.")]
ForceOption = Annotated[
    bool, typer.Option("--force", help="promote only: skip the gate's checks (recorded as forced).")
]
KeepOption = Annotated[
    bool, typer.Option("--keep", help="Keep the temporary workspace for inspection.")
]


commands = typer.Typer()
registry_app = typer.Typer(
    help="Review and move models in the MLflow registry.", no_args_is_help=True
)
GROUPS = {None: commands, "registry": registry_app}


def print_json(payload: Any) -> None:
    typer.echo(json.dumps(payload, indent=2, default=str))


def report(as_json: bool, payload: Any, line: str) -> None:
    """``payload`` as JSON for scripts, else ``line`` for a reviewer."""
    if as_json:
        print_json(payload)
    else:
        console.print(line, highlight=False)


def print_decision(decision: Any) -> None:
    """One line a reviewer reads: PROMOTED/REJECTED and the numbers behind it."""
    colour = "green" if decision.promote else "red"
    console.print(f"[bold {colour}]{decision.outcome.upper()}[/] {decision.reason}")
    if decision.rescore_note:
        console.print(f"note: {decision.rescore_note}", highlight=False)


def metric_cell(value: float | None) -> str:
    return "—" if value is None else f"{value:.4f}"


@command(commands, "evaluate")
def evaluate(
    ctx: typer.Context,
    model_dir: Annotated[
        Path | None, typer.Option("--model-dir", help="Default models/finetuned.")
    ] = None,
    output_dir: Annotated[
        Path | None, typer.Option("--output-dir", help="Default metrics/.")
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """Evaluate the fine-tuned model on the frozen test split (writes eval.json and plots)."""
    from components.model_stages import evaluate_node

    settings, paths = load(ctx)
    model, output = evaluation_dirs(paths, model_dir, output_dir)
    report = evaluate_node(
        settings,
        paths,
        model,
        output,
        paths.project_root,
        None if as_json else lambda notice: console.print(notice, highlight=False),
    )
    if settings.data.task == "token-classification":
        title = f"Test split ({len(report.gold)} sentences)"
        rows = [
            (name, metric_cell(value))
            for name, value in report.metrics.items()
            if name.startswith(("entity_", "token_")) and not name.startswith("entity_support")
        ]
    else:
        title = f"Test split ({len(report.y_true)} examples)"
        rows = [
            (name, metric_cell(report.metrics.get(name)))
            for name in ("accuracy", "f1_macro", "f1_weighted", "roc_auc", "log_loss", "ece")
        ]
    rows += [(f"behaviour {result.name}", f"{result.pass_rate:.0%}") for result in report.behaviour]
    if show_evaluation(report, as_json, title, rows):
        console.print(f"files: {output}", highlight=False)


def evaluation_dirs(
    paths: Any, model_dir: Path | None, output_dir: Path | None
) -> tuple[Path, Path]:
    """The model folder evaluated (default models/finetuned) and where the files go
    (default metrics/), as `ratchet evaluate --model-dir/--output-dir` name them."""
    model = paths.resolve(model_dir) if model_dir else paths.models_dir / "finetuned"
    return model, paths.resolve(output_dir) if output_dir else paths.metrics_dir


def show_evaluation(report: Any, as_json: bool, title: str, rows: list[tuple[str, str]]) -> bool:
    """Print an evaluation: its summary as JSON for scripts, else a table of ``rows``
    (metric, value) under ``title``. Returns whether the table was printed."""
    if as_json:
        print_json(report.summary())
        return False
    table = Table(title=title)
    table.add_column("metric")
    table.add_column("value", justify="right")
    for name, value in rows:
        table.add_row(name, value)
    console.print(table)
    return True


@command(registry_app, "list")
def registry_list(ctx: typer.Context, as_json: JsonOption = False) -> None:
    """List versions with aliases, key metrics, data md5, gate outcome and creation time."""
    from components.registry import LISTED_METRICS
    from components.registry_reports import list_versions

    settings, _ = load(ctx)
    rows = list_versions(settings.registry.model_name)
    if as_json:
        print_json(rows)
        return
    table = Table(title=settings.registry.model_name)
    table.add_column("v", justify="right", no_wrap=True)
    table.add_column("aliases", overflow="fold")
    for name in LISTED_METRICS:
        table.add_column(name, justify="right", no_wrap=True)
    for column in ("gate", "data md5", "created"):
        table.add_column(column, no_wrap=True)
    for row in rows:
        table.add_row(
            row["version"],
            "\n".join(row["aliases"]),
            *(metric_cell(row[name]) for name in LISTED_METRICS),
            row["gate"],
            row["prepared_data_md5"][:8],
            row["created"][:16].replace("T", " "),
        )
    console.print(table)


@command(registry_app, "show")
def registry_show(
    ctx: typer.Context,
    version: VersionArgument,
    as_json: JsonOption = False,
) -> None:
    """Show a version's model card (markdown) and aliases."""
    from components.registry_reports import show_version

    settings, _ = load(ctx)
    shown = show_version(settings.registry.model_name, version)
    if as_json:
        print_json(shown)
        return
    console.print(f"aliases: {', '.join(shown['aliases']) or '—'}", highlight=False)
    console.print(Markdown(shown["model_card"]))


def confusion_table(title: str, matrix: list[list[int]], labels: list[str]) -> Table:
    table = Table(title=title)
    table.add_column("true \\ predicted")
    for label in labels:
        table.add_column(label, justify="right")
    for label, row in zip(labels, matrix, strict=True):
        table.add_row(label, *(str(count) for count in row))
    return table


@command(registry_app, "compare")
def registry_compare(
    ctx: typer.Context,
    version_a: VersionArgument,
    version_b: VersionArgument,
    as_json: JsonOption = False,
) -> None:
    """Compare two versions on A's test split: deltas (B - A), significance, diffs."""
    from components.registry_reports import compare_versions

    settings, _ = load(ctx)
    name, batch_size = settings.registry.model_name, settings.eval.batch_size
    result = compare_versions(name, version_a, version_b, settings.gate.significance, batch_size)
    if as_json:
        print_json(result)
        return
    a, b = result["a"], result["b"]
    metrics = Table(title=f"v{a} -> v{b}")
    for column in ("metric", f"v{a}", f"v{b}", "delta"):
        metrics.add_column(column, justify="left" if column == "metric" else "right")
    for name, values in result["metrics"].items():
        metrics.add_row(
            name, metric_cell(values["a"]), metric_cell(values["b"]), f"{values['delta']:+.4f}"
        )
    console.print(metrics)
    test = result["significance"]
    rescored = f" (v{b} re-scored on v{a}'s split)" if test["rescored"] else ""
    console.print(
        f"paired on {test['test_examples']} examples{rescored}: "
        f"accuracy {test['b_minus_a_accuracy']:+.4f}, "
        f"{test['confidence_level']:.0%} CI [{test['ci_low']:+.4f}, {test['ci_high']:+.4f}], "
        f"McNemar p={test['mcnemar_p_value']:.3g} "
        f"({'significant' if test['significant'] else 'not significant'})",
        highlight=False,
    )
    labels = result["labels"]
    console.print(
        Columns(
            [
                confusion_table(f"v{a}", result["confusion_matrices"]["a"], labels),
                confusion_table(f"v{b}", result["confusion_matrices"]["b"], labels),
            ]
        )
    )
    for title, rows in (("lineage", result["lineage_diff"]), ("config", result["config_diff"])):
        diff = Table(title=f"{title} differences")
        for column in ("key", f"v{a}", f"v{b}"):
            diff.add_column(column)
        for row in rows:
            diff.add_row(row["key"], str(row["a"]), str(row["b"]))
        console.print(diff if rows else f"{title}: identical", highlight=False)


@command(registry_app, "rollback")
def registry_rollback(
    ctx: typer.Context,
    reason: ReasonOption = "manual rollback",
    by: ByOption = None,
    as_json: JsonOption = False,
) -> None:
    """Move `champion` back to `previous-champion` (its Bento is built first if missing)."""
    from components.aliases import rollback
    from flows.tasks import release_for

    settings, paths = load(ctx)
    demoted, restored = rollback(
        settings.registry.model_name,
        reason,
        by,
        state_dir=paths.state_dir,
        release=release_for(settings, paths),
    )
    report(
        as_json, {"demoted": demoted, "champion": restored}, f"champion: v{demoted} -> v{restored}"
    )


VERDICTS = {
    "promote": "Promote a version to champion through the gate (unless --force); records who "
    "and why.",
    "approve": "Approve the version awaiting review (`pending-review`): it becomes champion.",
    "reject": "Reject the version awaiting review: `pending-review` is cleared, champion stays.",
}


def registry_verdict(
    ctx: typer.Context,
    version: VersionArgument,
    reason: ReasonOption,
    by: ByOption = None,
    force: ForceOption = False,
    as_json: JsonOption = False,
) -> None:
    """A reviewer's verdict on a version, recorded with who and why; the command's name
    says which: promote (through the gate unless --force), approve or reject."""
    from components import aliases, registry
    from components.errors import RegistryError
    from flows.tasks import release_for

    verdict = ctx.info_name
    if force and verdict != "promote":
        raise RegistryError(f"--force applies to `registry promote` only, not to {verdict}")
    settings, paths = load(ctx)
    name = settings.registry.model_name
    if verdict == "promote":
        from components.promotion import promote_manually

        decision = promote_manually(
            name,
            version,
            settings.gate,
            reason,
            by,
            force,
            batch_size=settings.eval.batch_size,
            release=release_for(settings, paths),
            state_dir=paths.state_dir,
        )
        if as_json:
            print_json(decision.to_dict())
        else:
            print_decision(decision)
        return
    client = registry.make_client()
    if verdict == "approve":
        release = release_for(settings, paths)
        previous = aliases.approve(
            client, name, version, reason, by, release=release, state_dir=paths.state_dir
        )
        line = f"champion: {aliases.describe_version(previous)} -> v{version} (approved)"
        report(as_json, {"champion": version, "previous": previous}, line)
        return
    aliases.reject(client, name, version, reason, by, state_dir=paths.state_dir)
    champion = registry.aliases(client, name).get(registry.CHAMPION)
    line = f"v{version} rejected; champion stays {aliases.describe_version(champion)}"
    report(as_json, {"rejected": version, "champion": champion}, line)


for verdict, summary in VERDICTS.items():
    command(registry_app, verdict, help=summary)(registry_verdict)


@command(registry_app, "history")
def registry_history(ctx: typer.Context, as_json: JsonOption = False) -> None:
    """Every recorded alias move, oldest first: alias, from, to, kind, who, when, why."""
    from components import aliases, registry
    from components.alias_history import alias_history

    settings, _ = load(ctx)
    name = settings.registry.model_name
    moves = alias_history(registry.make_client(), name)
    if as_json:
        print_json([move.to_dict() for move in moves])
        return
    table = Table(title=f"{name}: alias history")
    for column in ("when (UTC)", "alias", "from", "to", "kind", "by", "reason", "bento"):
        table.add_column(column, overflow="fold")
    for move in moves:
        table.add_row(
            move.at[:19].replace("T", " "),
            move.alias,
            aliases.describe_version(move.from_version),
            aliases.describe_version(move.to_version),
            move.kind,
            move.by,
            move.reason,
            move.bento or "—",
        )
    console.print(table)


@command(commands, "reproduce")
def reproduce(
    ctx: typer.Context,
    version: VersionArgument,
    keep: KeepOption = False,
    as_json: JsonOption = False,
) -> None:
    """Rebuild a version from its recorded lineage and report metric differences."""
    from components.reproduce import reproduce_version

    settings, paths = load(ctx)
    result = reproduce_version(settings.registry.model_name, version, paths, keep=keep)
    if as_json:
        print_json(result.to_dict())
        return
    table = Table(title=f"reproduce v{version}")
    for column in ("metric", "registered", "reproduced", "delta"):
        table.add_column(column, justify="left" if column == "metric" else "right")
    for name, row in result.differences.items():
        table.add_row(
            name,
            metric_cell(row["registered"]),
            metric_cell(row["reproduced"]),
            f"{row['delta']:+.2e}",
        )
    console.print(table)
    for note in result.notes:
        console.print(f"note: {note}", highlight=False)
    verdict = "[green]exact match[/]" if result.matches else "[yellow]differs[/]"
    console.print(f"{verdict}; predictions differing: {result.predictions_differing}")


@command(commands, "ui")
def ui(
    ctx: typer.Context,
    port: Annotated[int, typer.Option("--port", help="Port on 127.0.0.1.")] = 5000,
) -> None:
    """Open the MLflow UI (runs, plots, model cards) on 127.0.0.1 against the tracking store."""
    from components.secrets import mask_uri_credentials
    from components.state import mlflow_tracking_uri

    settings, paths = load(ctx)
    store = mlflow_tracking_uri(settings, paths)
    command = [
        str(Path(sys.executable).parent / "mlflow"),
        "ui",
        "--backend-store-uri",
        store,
        "--default-artifact-root",
        paths.mlflow_artifacts.as_uri(),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
    ]
    shown = mask_uri_credentials(store)
    console.print(f"MLflow UI on http://127.0.0.1:{port} ({shown})", highlight=False)
    subprocess.run(command, check=False, env=os.environ.copy())
