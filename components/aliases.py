"""Moving registry aliases safely: a re-read before each move, under the alias lock, recorded.

Every move of ``champion`` (a gated promotion, ``ratchet registry promote``, ``rollback``,
``approve``) and of ``pending-review`` goes through this module:

1. the Bento of the version that is to hold the alias is built and checked first (the
   caller's ``release`` function, see ``serving/release.py``), outside the lock;
2. :func:`~components.alias_lock.alias_lock` is taken (``components/alias_lock.py``);
3. the aliases are read again; if ``champion`` is no longer the version the decision was
   based on, :class:`~components.errors.AliasChanged` is raised and nothing moves;
4. the alias moves, and the move is appended to the model's alias history
   (``components/alias_history.py``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from components import registry
from components.alias_history import (
    AliasMove,
    acting_user,
    now_utc,
    record_champion_move,
    record_move,
)
from components.alias_lock import alias_lock, default_state_dir
from components.errors import AliasChanged, RegistryError

if TYPE_CHECKING:
    from mlflow import MlflowClient

    from components.config import GateConfig
    from components.gate import GateDecision

logger = logging.getLogger(__name__)

PENDING_REVIEW = "pending-review"
REVIEW_STATE = "review.state"  # pending -> approved | rejected | superseded
REVIEW_CHAMPION = "review.champion_version"  # the champion the gate compared with

# Builds (or finds) and checks the Bento of a registry version; returns its tag.
Release = Callable[[str], str]


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


# ---- rollback ---------------------------------------------------------------------------


def rollback(
    model_name: str,
    reason: str,
    by: str | None = None,
    client: MlflowClient | None = None,
    *,
    state_dir: Path | None = None,
    release: Release | None = None,
) -> tuple[str, str]:
    """Move ``champion`` back to ``previous-champion`` and clear the latter.

    ``release`` (see ``serving/release.py``) first finds or builds and checks the restored
    version's Bento; then, under the alias lock (``components/alias_lock.py``, in
    ``state_dir``), the aliases are read again and the move is recorded in the history.

    Returns:
        (the demoted version, the restored version).

    Raises:
        RegistryError: there is no ``previous-champion`` to go back to.
        AliasChanged: another writer moved the aliases while the Bento was prepared.
    """
    client = client or registry.make_client()
    current = registry.aliases(client, model_name)
    previous = current.get(registry.PREVIOUS_CHAMPION)
    if previous is None:
        raise RegistryError(
            f"{model_name} has no '{registry.PREVIOUS_CHAMPION}' alias to roll back to"
        )
    demoted = current.get(registry.CHAMPION, "")
    bento = release(previous) if release is not None else None
    with alias_lock(model_name, state_dir or default_state_dir()):
        again = registry.aliases(client, model_name)
        if (again.get(registry.CHAMPION), again.get(registry.PREVIOUS_CHAMPION)) != (
            demoted or None,
            previous,
        ):
            raise AliasChanged(
                f"{model_name}'s aliases changed while the rollback was prepared (champion "
                f"{describe_version(demoted or None)} -> "
                f"{describe_version(again.get(registry.CHAMPION))}); nothing was moved. "
                "Check `ratchet registry history` and roll back again if still wanted."
            )
        registry.record_actor(client, model_name, previous, "rollback", by, reason)
        if demoted:
            client.set_model_version_tag(model_name, demoted, "rolled_back_at", rolled_back_at())
        client.set_registered_model_alias(model_name, registry.CHAMPION, previous)
        client.set_model_version_tag(model_name, previous, "champion.held", "true")
        client.delete_registered_model_alias(model_name, registry.PREVIOUS_CHAMPION)
        record_champion_move(
            client, model_name, demoted or None, previous, "rollback", reason, by, bento
        )
    return demoted, previous


def rolled_back_at() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")
