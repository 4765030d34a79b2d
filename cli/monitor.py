"""`ratchet monitor` and `ratchet feedback export`: watch served traffic, collect labels.

ratchet monitor --since 24h --json     # exit 0 no drift, 1 drift, 3 not enough data
ratchet feedback export                # feedback store -> validated, DVC-tracked data set
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from cli.options import JsonOption, command, console, load

commands = typer.Typer()
feedback_app = typer.Typer(help="Labels sent to the server's POST /feedback.")
GROUPS = {None: commands, "feedback": feedback_app}


@command(commands, "monitor")
def monitor(
    ctx: typer.Context,
    since: Annotated[
        str | None,
        typer.Option(help="Window of logged traffic, e.g. 24h, 30m, 7d (default monitor.window)."),
    ] = None,
    plot: Annotated[
        Path | None,
        typer.Option(help="Also write the drift picture (PNG) here; it is always logged."),
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """Compare the served traffic of a window with the champion's evaluation reference.

    Exit code 0: no drift; 1: drift; 3: not enough data in the window (never an alarm).
    """
    from components.monitoring_run import run_monitor

    resolved, paths = load(ctx)
    outcome = run_monitor(resolved, paths, since)
    if plot is not None and outcome.picture is not None:
        plot.parent.mkdir(parents=True, exist_ok=True)
        plot.write_bytes(outcome.picture)
    result = outcome.result
    if as_json:
        typer.echo(json.dumps(result.to_dict()))
    else:
        console.print(
            f"{outcome.model_name} v{outcome.version}: {result.reason} "
            f"({result.window['texts']} texts, {result.window['requests']} requests)",
            highlight=False,
        )
        for name, test in result.tests.items():
            mark = "DRIFT" if test.drift else "ok"
            console.print(
                f"  {name:<20} statistic {test.statistic:10.4f}  p {test.p_value:.3g}  {mark}",
                highlight=False,
            )
        if outcome.run_id:
            console.print(f"report logged to MLflow run {outcome.run_id}", highlight=False)
    raise typer.Exit(code=result.exit_code)


@command(feedback_app, "export")
def feedback_export(ctx: typer.Context, as_json: JsonOption = False) -> None:
    """Validate the collected feedback and store it as the DVC-tracked data/feedback.

    Prepare adds it to the train split. With at least monitor.retrain_after_feedback_rows
    rows, emits the Prefect event ratchet.feedback.ready (retrain-on-demand's trigger).
    """
    from components.events import FEEDBACK_EVENT, emit_ratchet_event
    from components.feedback import export_feedback

    resolved, paths = load(ctx)
    exported = export_feedback(resolved, paths)
    summary = {
        "rows": exported.rows,
        "dropped_leaking": exported.dropped_leaking,
        "md5": exported.md5,
        "path": str(exported.path),
        "event": None,
    }
    if exported.rows >= resolved.monitor.retrain_after_feedback_rows:
        payload = {"rows": exported.rows, "md5": exported.md5}
        model_name, params = resolved.registry.model_name, paths.params_in_project
        if emit_ratchet_event(FEEDBACK_EVENT, model_name, payload, params=params):
            summary["event"] = FEEDBACK_EVENT
    if as_json:
        typer.echo(json.dumps(summary))
        return
    console.print(
        f"exported {exported.rows} feedback rows to {exported.path} (DVC md5 {exported.md5}); "
        f"{exported.dropped_leaking} dropped as validation/test texts",
        highlight=False,
    )
