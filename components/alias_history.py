"""The alias history: every move of a registry alias, who made it, when and why.

MLflow keeps no history of alias moves (mlflow/mlflow#2169). Each move is one small JSON
artifact ``alias-history/<UTC time>-<uuid>.json`` of one run per registered model (run
``alias-history-<model>`` in experiment ``ratchet-registry-audit``), so the history lives
where the registry lives, also on a remote server, and no file is ever rewritten.
"""

from __future__ import annotations

import getpass
import json
import tempfile
import uuid
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from components import registry

if TYPE_CHECKING:
    from mlflow import MlflowClient

AUDIT_EXPERIMENT = "ratchet-registry-audit"
HISTORY_DIR = "alias-history"
HISTORY_RUN_TAG = "alias_history_of"  # value: the registered model name


@dataclass(frozen=True)
class AliasMove:
    """One alias move, as recorded in the history.

    Attributes:
        kind: ``gated`` (the gate), ``forced`` (``promote --force``), ``rollback``,
            ``review`` (a passed challenger waits for a reviewer), ``approved``, ``rejected``.
        from_version, to_version: who held the alias before and after (None: nobody).
        bento: the Bento built and checked for ``to_version``, when there is one.
    """

    model: str
    alias: str
    from_version: str | None
    to_version: str | None
    kind: str
    reason: str
    by: str
    at: str
    bento: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def now_utc() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds")


def acting_user(by: str | None) -> str:
    return by or getpass.getuser()


def audit_experiment_id(client: MlflowClient, model_name: str, near_version: str) -> str:
    """The audit experiment; created beside the experiment of ``near_version``'s run, so a
    local store keeps its artifacts in the state folder like every other run."""
    experiment = client.get_experiment_by_name(AUDIT_EXPERIMENT)
    if experiment is not None:
        return str(experiment.experiment_id)
    run_id = registry.evaluation_run_id(registry.get_version(client, model_name, near_version))
    home = client.get_experiment(client.get_run(run_id).info.experiment_id)
    return str(client.create_experiment(AUDIT_EXPERIMENT, artifact_location=home.artifact_location))


def history_run_id(
    client: MlflowClient, model_name: str, near_version: str | None = None
) -> str | None:
    """The run that holds ``model_name``'s alias history; created (when ``near_version``
    is given) the first time a move is recorded."""
    experiment = client.get_experiment_by_name(AUDIT_EXPERIMENT)
    if experiment is not None:
        runs = client.search_runs(
            [experiment.experiment_id],
            filter_string=f"tags.{HISTORY_RUN_TAG} = '{model_name}'",
            max_results=1,
        )
        if runs:
            return str(runs[0].info.run_id)
    if near_version is None:
        return None
    run = client.create_run(
        audit_experiment_id(client, model_name, near_version),
        run_name=f"alias-history-{model_name}",
        tags={HISTORY_RUN_TAG: model_name},
    )
    client.set_terminated(run.info.run_id)
    return str(run.info.run_id)


def record_move(client: MlflowClient, move: AliasMove) -> None:
    """Append one move to the model's alias history (a new artifact; nothing is rewritten)."""
    near = move.to_version or move.from_version
    run_id = history_run_id(client, move.model, near)
    if run_id is None:  # a move with neither side: nothing happened
        return
    stamp = datetime.fromisoformat(move.at).strftime("%Y%m%dT%H%M%S.%fZ")
    name = f"{HISTORY_DIR}/{stamp}-{uuid.uuid4().hex[:12]}.json"
    client.log_text(run_id, json.dumps(move.to_dict(), indent=2), name)


def alias_history(client: MlflowClient, model_name: str) -> list[AliasMove]:
    """Every recorded alias move of ``model_name``, oldest first."""
    run_id = history_run_id(client, model_name)
    if run_id is None:
        return []
    files = sorted(item.path for item in client.list_artifacts(run_id, HISTORY_DIR))
    moves = []
    with tempfile.TemporaryDirectory() as tmp:
        for path in files:
            local = Path(client.download_artifacts(run_id, path, tmp))
            moves.append(AliasMove(**json.loads(local.read_text(encoding="utf-8"))))
    return sorted(moves, key=lambda move: move.at)


def record_champion_move(
    client: MlflowClient,
    model_name: str,
    old: str | None,
    new: str,
    kind: str,
    reason: str,
    by: str | None,
    bento: str | None,
) -> None:
    """Append a move of ``champion`` from ``old`` to ``new`` to the history."""
    move = AliasMove(
        model_name, registry.CHAMPION, old, new, kind, reason, acting_user(by), now_utc(), bento
    )
    record_move(client, move)


# ---- guarded moves -----------------------------------------------------------------------
