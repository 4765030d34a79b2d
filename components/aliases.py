"""Moving registry aliases safely: one writer at a time, a re-read before each move, a history.

Every move of ``champion`` (a gated promotion, ``ratchet registry promote``, ``rollback``,
``approve``) and of ``pending-review`` goes through this module:

1. the Bento of the version that is to hold the alias is built and checked first (the
   caller's ``release`` function, see ``serving/release.py``), outside the lock;
2. :func:`alias_lock` is taken: an OS file lock in the state folder and, with a Prefect
   server configured (``PREFECT_API_URL``), a Prefect global concurrency limit per
   registered model, so machines that share a remote MLflow registry take turns too;
3. the aliases are read again; if ``champion`` is no longer the version the decision was
   based on, :class:`~components.errors.AliasChanged` is raised and nothing moves;
4. the alias moves, and the move is appended to the model's alias history.

MLflow keeps no history of alias moves (mlflow/mlflow#2169). Each move is one small JSON
artifact ``alias-history/<UTC time>-<uuid>.json`` of one run per registered model (run
``alias-history-<model>`` in experiment ``ratchet-registry-audit``), so the history lives
where the registry lives, also on a remote server, and no file is ever rewritten.
"""

from __future__ import annotations

import getpass
import json
import logging
import os
import tempfile
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from components import registry
from components.errors import AliasChanged, RegistryError

if TYPE_CHECKING:
    from mlflow import MlflowClient

    from components.config import GateConfig
    from components.gate import GateDecision

logger = logging.getLogger(__name__)

ALIAS_LIMIT_PREFIX = "ratchet-alias"
# A move holds the lock for a few registry calls (the Bento is built before), so a writer
# that waits longer than this is waiting on a stuck process, not on a slow move.
ALIAS_LOCK_TIMEOUT_S = 600.0
AUDIT_EXPERIMENT = "ratchet-registry-audit"
HISTORY_DIR = "alias-history"
HISTORY_RUN_TAG = "alias_history_of"  # value: the registered model name
PENDING_REVIEW = "pending-review"
REVIEW_STATE = "review.state"  # pending -> approved | rejected | superseded
REVIEW_CHAMPION = "review.champion_version"  # the champion the gate compared with

# Builds (or finds) and checks the Bento of a registry version; returns its tag.
Release = Callable[[str], str]


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


def default_state_dir() -> Path:
    """The state folder (``$RATCHET_HOME`` or ``.ratchet`` in the working directory)."""
    from components.state import ProjectPaths

    return ProjectPaths.discover().state_dir


def lock_file(model_name: str, state_dir: Path) -> Path:
    return state_dir / f"alias-{registry_slug(model_name)}.lock"


def registry_slug(model_name: str) -> str:
    return "".join(char if char.isalnum() or char in "-_." else "-" for char in model_name)


def alias_limit_name(model_name: str) -> str:
    """The Prefect global concurrency limit that serialises ``model_name``'s alias moves."""
    return f"{ALIAS_LIMIT_PREFIX}-{model_name}"


@contextmanager
def prefect_alias_slot(model_name: str, timeout_s: float) -> Iterator[None]:
    """Hold the Prefect server's one-slot limit for the model (shared by every machine)."""
    from prefect.client.orchestration import get_client
    from prefect.concurrency.asyncio import AcquireConcurrencySlotTimeoutError
    from prefect.concurrency.sync import concurrency

    name = alias_limit_name(model_name)
    with get_client(sync_client=True) as client:
        client.upsert_global_concurrency_limit_by_name(name, limit=1)
    try:
        with concurrency(name, occupy=1, timeout_seconds=timeout_s, strict=True):
            yield
    except AcquireConcurrencySlotTimeoutError as error:  # not a timeout inside the move
        raise RegistryError(
            f"another alias move of {model_name} held the Prefect concurrency limit {name!r} "
            f"for more than {timeout_s:g} s; try again, or check the limit with "
            f"`prefect gcl inspect {name}`"
        ) from error


@contextmanager
def alias_lock(
    model_name: str, state_dir: Path, timeout_s: float = ALIAS_LOCK_TIMEOUT_S
) -> Iterator[None]:
    """Hold the single alias-writer slot of a registered model.

    An OS file lock in the state folder (released by the kernel if the holder dies) and,
    when ``PREFECT_API_URL`` is set, also the Prefect global concurrency limit
    ``ratchet-alias-<model>``, which other machines using the same server respect.

    Raises:
        RegistryError: the slot stayed taken for ``timeout_s`` seconds.
    """
    from filelock import FileLock, Timeout

    path = lock_file(model_name, state_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Not thread-local: a second holder in this process must wait, as another process would.
    lock = FileLock(path, timeout=timeout_s, thread_local=False)
    try:
        lock.acquire()
    except Timeout as error:
        raise RegistryError(
            f"another alias move of {model_name} held {path} for more than {timeout_s:g} s; "
            "try again once it has finished"
        ) from error
    try:
        if os.environ.get("PREFECT_API_URL"):
            with prefect_alias_slot(model_name, timeout_s):
                yield
        else:
            yield
    finally:
        lock.release()


def describe_version(version: str | None) -> str:
    return "none" if version is None else f"v{version}"


def ensure_champion_unchanged(
    client: MlflowClient, model_name: str, expected: str | None, remedy: str
) -> dict[str, str]:
    """Re-read the aliases under the lock; refuse when ``champion`` moved since the decision.

    Returns:
        The current aliases.

    Raises:
        AliasChanged: the champion is not ``expected`` any more (nothing was moved).
    """
    current = registry.aliases(client, model_name)
    champion = current.get(registry.CHAMPION)
    if champion != expected:
        raise AliasChanged(
            f"{model_name}'s champion changed from {describe_version(expected)} to "
            f"{describe_version(champion)} after the decision was made (another promotion "
            f"or rollback ran meanwhile); no alias was moved. {remedy}"
        )
    return current


# ---- history ---------------------------------------------------------------------------


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


def make_champion(
    client: MlflowClient,
    model_name: str,
    version: str,
    expected_champion: str | None,
    *,
    kind: str,
    reason: str,
    by: str | None,
    bento: str | None,
    state_dir: Path,
    remedy: str,
) -> str | None:
    """Under the lock: check the champion is still ``expected_champion``, move ``champion``
    to ``version`` (the old one becomes ``previous-champion``) and record the move.

    Returns:
        The previous champion (None if there was none).
    """
    with alias_lock(model_name, state_dir):
        current = ensure_champion_unchanged(client, model_name, expected_champion, remedy)
        if current.get(registry.CHAMPION) == version:  # a rerun after the move: no move
            return None
        old = registry.move_champion(client, model_name, version)  # tags champion.held
        record_champion_move(client, model_name, old, version, kind, reason, by, bento)
    return old


def regate_remedy(version: str) -> str:
    return (
        f"Re-gate it against the new champion: `ratchet registry promote {version} --reason ...`."
    )


def block(
    client: MlflowClient, model_name: str, version: str, decision: GateDecision, why: str
) -> GateDecision:
    """Record that a passed decision could not be carried out; the alias stays."""
    blocked = replace(
        decision,
        promote=False,
        awaiting_review=False,
        reason=f"blocked before the alias move: {why} (the gate had said: {decision.reason})",
        failed_conditions=[*decision.failed_conditions, why],
    )
    registry.record_decision(client, model_name, version, blocked)
    return blocked


def conclude_gate(
    client: MlflowClient,
    model_name: str,
    version: str,
    decision: GateDecision,
    gate_cfg: GateConfig,
    *,
    expected_champion: str | None,
    release: Release | None,
    state_dir: Path,
    by: str | None = None,
) -> GateDecision:
    """The gate's tail, after the decision: record it; for a pass, build and check the
    Bento, then (under the lock, champion re-read) move ``champion`` or, with
    ``gate.require_approval``, ``pending-review``; ``gate.state: done`` last.

    A failed build or check, or a champion that moved meanwhile, records the decision as
    blocked, leaves every alias where it was and raises; ``gate.state`` stays ``pending``,
    so the next retrain gates the version again.

    Raises:
        ServingError: the Bento could not be built or did not answer as evaluated.
        AliasChanged: the champion moved between the decision and the move.
    """
    from components.errors import ServingError

    if decision.promote and gate_cfg.require_approval and not decision.forced:
        decision = replace(decision, awaiting_review=True)
    registry.record_decision(client, model_name, version, decision)
    if decision.promote:
        try:
            bento = release(version) if release is not None else None
        except ServingError as error:
            block(client, model_name, version, decision, f"the Bento failed: {error}")
            raise
        try:
            if decision.awaiting_review:
                request_review(
                    client, model_name, version, decision, expected_champion, bento, state_dir
                )
            else:
                kind = "forced" if decision.forced else "gated"
                make_champion(
                    client,
                    model_name,
                    version,
                    expected_champion,
                    kind=kind,
                    reason=decision.reason,
                    by=by,
                    bento=bento,
                    state_dir=state_dir,
                    remedy=regate_remedy(version),
                )
        except AliasChanged as error:
            block(client, model_name, version, decision, str(error))
            raise
    registry.mark_gate_done(client, model_name, version)
    return decision


# ---- human review ------------------------------------------------------------------------


def request_review(
    client: MlflowClient,
    model_name: str,
    version: str,
    decision: GateDecision,
    expected_champion: str | None,
    bento: str | None,
    state_dir: Path,
) -> None:
    """Under the lock: point ``pending-review`` at a version that passed the gate and tag
    the review as pending, with the champion the gate compared it with; nothing else moves.
    A version that was waiting before is superseded."""
    with alias_lock(model_name, state_dir):
        current = ensure_champion_unchanged(
            client, model_name, expected_champion, regate_remedy(version)
        )
        waiting = current.get(PENDING_REVIEW)
        if waiting is not None and waiting != version:
            client.set_model_version_tag(model_name, waiting, REVIEW_STATE, "superseded")
        tags = {
            REVIEW_STATE: "pending",
            REVIEW_CHAMPION: expected_champion or "",
            "review.requested_at": now_utc(),
            "review.gate_reason": decision.reason,
        }
        for key, value in tags.items():
            client.set_model_version_tag(model_name, version, key, value)
        client.set_registered_model_alias(model_name, PENDING_REVIEW, version)
        show_review(
            client,
            model_name,
            version,
            {
                "state": "pending",
                "by": "the gate",
                "at": tags["review.requested_at"],
                "reason": f"passed against {describe_version(expected_champion)}; waiting for "
                f"`ratchet registry approve {version} --reason ...` or `reject`",
            },
        )
        record_move(
            client,
            AliasMove(
                model_name,
                PENDING_REVIEW,
                waiting,
                version,
                "review",
                decision.reason,
                acting_user(None),
                now_utc(),
                bento,
            ),
        )


def pending_review_champion(client: MlflowClient, model_name: str, version: str) -> str | None:
    """The champion a version awaiting review was gated against (None: there was none).

    Raises:
        RegistryError: the version is not the one awaiting review.
    """
    tags = registry.version_tags(client, model_name, version)
    waiting = registry.aliases(client, model_name).get(PENDING_REVIEW)
    if tags.get(REVIEW_STATE) != "pending" or waiting != str(version):
        state = tags.get(REVIEW_STATE, "never requested")
        raise RegistryError(
            f"{model_name} v{version} is not awaiting review (review: {state}; "
            f"'{PENDING_REVIEW}' is {describe_version(waiting)})"
        )
    return tags.get(REVIEW_CHAMPION) or None


def close_review(
    client: MlflowClient, model_name: str, version: str, outcome: str, reason: str, by: str | None
) -> dict[str, str]:
    """Tag the review's outcome, who, when and why, and show it on the model card."""
    review = {"state": outcome, "by": acting_user(by), "at": now_utc(), "reason": reason}
    for key, value in review.items():
        client.set_model_version_tag(model_name, version, f"review.{key}", value)
    client.set_model_version_tag(
        model_name, version, "gate.decision", "promoted" if outcome == "approved" else "rejected"
    )
    show_review(client, model_name, version, review)
    return review


def show_review(
    client: MlflowClient, model_name: str, version: str, review: dict[str, str]
) -> None:
    """Write the review section of the version's model card."""
    from components.model_card import with_review

    model_version = registry.get_version(client, model_name, version)
    card = with_review(model_version.description or "", review)
    client.update_model_version(model_name, version, description=card)


def review_remedy(version: str) -> str:
    return (
        "The gate compared it with the old champion: re-gate it with "
        f"`ratchet registry promote {version} --reason ...`."
    )


def approve(
    client: MlflowClient,
    model_name: str,
    version: str,
    reason: str,
    by: str | None,
    *,
    release: Release | None,
    state_dir: Path,
) -> str | None:
    """A reviewer's approval: ``champion`` moves to the version awaiting review.

    Refused when the champion changed since the gate's decision. Returns the previous
    champion.

    Raises:
        RegistryError: no reason, or the version is not awaiting review.
        AliasChanged: the champion moved since the gate compared the version with it.
    """
    if not reason.strip():
        raise RegistryError("an approval needs a reason (--reason)")
    expected = pending_review_champion(client, model_name, version)
    # Refuse before building anything when the champion already moved; again under the lock.
    ensure_champion_unchanged(client, model_name, expected, review_remedy(version))
    bento = release(version) if release is not None else None
    with alias_lock(model_name, state_dir):
        pending_review_champion(client, model_name, version)  # still awaiting, under the lock
        ensure_champion_unchanged(client, model_name, expected, review_remedy(version))
        old = registry.move_champion(client, model_name, version)  # tags champion.held
        client.delete_registered_model_alias(model_name, PENDING_REVIEW)
        close_review(client, model_name, version, "approved", reason, by)
        record_champion_move(client, model_name, old, version, "approved", reason, by, bento)
    return old


def reject(
    client: MlflowClient,
    model_name: str,
    version: str,
    reason: str,
    by: str | None,
    *,
    state_dir: Path,
) -> None:
    """A reviewer's rejection: ``pending-review`` is cleared, the champion stays.

    Raises:
        RegistryError: no reason, or the version is not awaiting review.
    """
    if not reason.strip():
        raise RegistryError("a rejection needs a reason (--reason)")
    with alias_lock(model_name, state_dir):
        pending_review_champion(client, model_name, version)
        client.delete_registered_model_alias(model_name, PENDING_REVIEW)
        close_review(client, model_name, version, "rejected", reason, by)
        record_move(
            client,
            AliasMove(
                model_name,
                PENDING_REVIEW,
                version,
                None,
                "rejected",
                reason,
                acting_user(by),
                now_utc(),
            ),
        )
