"""Promotion: the gate's I/O shell around the pure decision in ``components/gate.py``.

:func:`apply_gate` finds the champions, re-scores the current one on the challenger's test
split when the splits differ (with the champion's own recorded inference settings, and says
so), records the decision on the challenger's model version (tags and a JSON artifact) and,
last of all, moves the aliases (``components/aliases.py``). A crash anywhere before that
last step leaves ``champion`` where it was. :func:`promote_manually` is a reviewer's
promotion, through the same gate unless forced.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from components import aliases, registry
from components.alias_lock import default_state_dir
from components.config import GateConfig
from components.errors import GateRejected, RegistryError
from components.gate import GateDecision, compare_to_champion
from components.token_evaluate import TokenEvaluationReport
from components.token_promotion import gate_tokens_against_champions, load_any_evaluation

if TYPE_CHECKING:
    from mlflow import MlflowClient

    from components.aliases import Release
    from components.evaluate import EvaluationReport


def champion_predictions_on(
    client: MlflowClient,
    model_name: str,
    champion_version: str,
    report: EvaluationReport,
    batch_size: int,
) -> tuple[np.ndarray, bool, str]:
    """The champion's predicted ids on the challenger's test split.

    Reuses the champion's recorded predictions when its test split has the same md5;
    otherwise downloads the champion and re-scores it on the challenger's texts with the
    champion's own recorded inference settings (``inference.*`` tags: the token window and
    precision it is served with), not the challenger's.

    Returns:
        (predicted ids, whether it was re-scored, a note saying why).
    """
    recorded = registry.recorded_predictions(client, model_name, champion_version)
    champion = registry.get_version(client, model_name, champion_version)
    champion_md5 = champion.tags.get("test_split_md5")
    if recorded is not None and champion_md5 == report.test_split_md5:
        return recorded["predicted"].to_numpy(), False, "champion scored on the same test split"
    max_length, precision = registry.recorded_inference_settings(champion.tags)
    window = "its tokenizer's window" if max_length is None else f"max_length {max_length}"
    note = (
        f"test split changed (champion md5 {champion_md5}, challenger md5 "
        f"{report.test_split_md5}): champion v{champion_version} re-scored on the "
        f"challenger's {len(report.texts)} test examples with its own settings "
        f"({window}, {precision})"
    )
    predicted = registry.score_version(client, model_name, champion, report.texts, batch_size)
    return predicted, True, note


def best_champion_predictions(
    client: MlflowClient, model_name: str, report: EvaluationReport, metric: str
) -> tuple[str | None, np.ndarray | None]:
    """The best former champion on the challenger's test split and its recorded predictions.

    Same md5 means the same texts and labels in the same order, so the recorded
    predictions pair up with the challenger's example by example.
    """
    best = registry.best_former_champion(
        client, model_name, report.test_split_md5, metric, list(report.labels)
    )
    if best is None:
        return None, None
    recorded = registry.recorded_predictions(client, model_name, best.version)
    if recorded is None or len(recorded) != len(report.y_true):
        return None, None
    return str(best.version), recorded["predicted"].to_numpy()


def labels_differ_decision(
    report: EvaluationReport,
    gate_cfg: GateConfig,
    champion_version: str | None,
    champion_labels: list[str],
) -> GateDecision:
    """A rejection: class ids mean different classes, so no paired comparison is possible,
    and a task change is a reviewer's call (`ratchet registry promote N --force --reason`)."""
    return replace(
        compare_to_champion(
            report.y_true, report.predicted_ids, None, gate_cfg, labels=report.labels
        ),
        promote=False,
        reason=f"its labels {list(report.labels)} differ from champion "
        f"v{champion_version}'s {champion_labels}, so the two cannot be compared; a "
        "reviewer may promote it with --force",
        failed_conditions=["labels differ from the champion's"],
        champion_version=champion_version,
    )


def decide_against_champions(
    client: MlflowClient,
    model_name: str,
    report: EvaluationReport,
    gate_cfg: GateConfig,
    contender_version: str | None,
    champion_version: str | None,
    batch_size: int,
) -> GateDecision:
    """The gate's decision against the current champion (``contender_version``, None when
    there is none other than the challenger itself) and the best former champion."""
    champion_pred = None
    rescored, note = False, ""
    if contender_version is not None:
        champion_pred, rescored, note = champion_predictions_on(
            client, model_name, contender_version, report, batch_size
        )
    best_version, best_pred = best_champion_predictions(client, model_name, report, gate_cfg.metric)
    decision = compare_to_champion(
        report.y_true,
        report.predicted_ids,
        champion_pred,
        gate_cfg,
        report.behaviour,
        labels=report.labels,
        champion_version=champion_version,
        best_champion_pred=best_pred,
        best_champion_version=best_version,
    )
    return replace(decision, champion_rescored=rescored, rescore_note=note)


def apply_gate(
    model_name: str,
    challenger_version: str,
    report: EvaluationReport | TokenEvaluationReport,
    gate_cfg: GateConfig,
    *,
    batch_size: int = 64,
    client: MlflowClient | None = None,
    release: Release | None = None,
    state_dir: Path | None = None,
    by: str | None = None,
) -> GateDecision:
    """Run the gate for a registered challenger and move aliases if it passes.

    Order matters: read the champions, decide, record the decision on the challenger
    (tags ``gate.*`` and artifact ``gate/decision-v<N>.json``), and only then move
    ``champion`` (the old one becomes ``previous-champion``). Nothing before the move
    changes an alias, so a crash leaves the champion untouched; ``gate.state: done`` is
    written last, so the retrain flow gates a version again until its gate has finished.

    Args:
        model_name: registered model name (``registry.model_name``).
        challenger_version: the version registered by ``registry.register_challenger``.
        report: the challenger's evaluation on its test split (``report.texts`` are used to
            re-score the champion when its test split differs); a token classifier's
            ``TokenEvaluationReport`` is gated on entity F1
            (``components/token_promotion.py``).
        gate_cfg: the ``gate`` config section.
        batch_size: batch size of a champion re-score (its other settings are its own).
        client: an MlflowClient; default uses the current tracking URI.
        release: builds (or finds) and checks the challenger's Bento before any alias
            moves (``serving/release.py``); None moves aliases without a Bento.
        state_dir: where the alias lock lives (default: the state folder).
        by: who asked, for the alias history (default: the OS user).

    Returns:
        The recorded decision (``decision.promote`` says whether it passed;
        ``decision.awaiting_review`` that ``pending-review`` moved instead of ``champion``).

    Raises:
        ServingError, AliasChanged: a passed challenger could not be moved to (see
            ``components.aliases.conclude_gate``); no alias moved.
    """
    client = client or registry.make_client()
    version = str(challenger_version)
    decide: Callable[[str | None], GateDecision]
    if isinstance(report, TokenEvaluationReport):
        decide = partial(
            gate_tokens_against_champions, client, model_name, version, report, gate_cfg, batch_size
        )
    else:
        decide = partial(
            gate_against_champions, client, model_name, version, report, gate_cfg, batch_size
        )
    return settle(client, model_name, version, gate_cfg, decide, release, state_dir, by)


def gate_against_champions(
    client: MlflowClient,
    model_name: str,
    challenger_version: str,
    report: EvaluationReport,
    gate_cfg: GateConfig,
    batch_size: int,
    champion_version: str | None,
) -> GateDecision:
    """The gate's decision on a registered challenger against ``champion_version`` (the
    current champion, None when there is none) and the best former champion."""
    contender = champion_version is not None and champion_version != challenger_version
    champion_labels = None
    if champion_version is not None:
        champion = registry.get_version(client, model_name, champion_version)
        champion_labels = json.loads(champion.tags.get("labels", "null"))
    if contender and champion_labels is not None and champion_labels != list(report.labels):
        decision = labels_differ_decision(report, gate_cfg, champion_version, champion_labels)
    else:
        decision = decide_against_champions(
            client,
            model_name,
            report,
            gate_cfg,
            champion_version if contender else None,
            champion_version,
            batch_size,
        )
    return replace(
        decision, challenger_version=challenger_version, test_split_md5=report.test_split_md5
    )


def settle(
    client: MlflowClient,
    model_name: str,
    version: str,
    gate_cfg: GateConfig,
    decide: Callable[[str | None], GateDecision],
    release: Release | None,
    state_dir: Path | None,
    by: str | None,
) -> GateDecision:
    """Decide on ``version`` against the current champion (``decide(champion_version)``),
    then conclude: record the decision, build and check the Bento, move the aliases
    (:func:`components.aliases.conclude_gate`; the alias move checks that the champion
    is still the one decided against)."""
    champion_version = registry.aliases(client, model_name).get(registry.CHAMPION)
    return aliases.conclude_gate(
        client,
        model_name,
        version,
        decide(champion_version),
        gate_cfg,
        expected_champion=champion_version,
        release=release,
        state_dir=state_dir or default_state_dir(),
        by=by,
    )


def forced_decision(
    client: MlflowClient,
    model_name: str,
    version: str,
    gate_cfg: GateConfig,
    reason: str,
    by: str | None,
    champion: str | None,
) -> GateDecision:
    """The record of a ``--force`` promotion: no gate ran, the version's own metrics."""
    tags = registry.version_tags(client, model_name, version)
    return GateDecision.under(
        gate_cfg,
        promote=True,
        reason=f"promoted with --force by {by or 'current user'}: {reason}",
        challenger_accuracy=float(tags.get("metric.accuracy", "nan")),
        challenger_version=version,
        champion_version=champion,
        forced=True,
        challenger_metric=float(tags.get(f"metric.{gate_cfg.metric}", "nan")),
        test_split_md5=tags.get("test_split_md5"),
    )


def promote_manually(
    model_name: str,
    version: str,
    gate_cfg: GateConfig,
    reason: str,
    by: str | None = None,
    force: bool = False,
    *,
    batch_size: int = 64,
    client: MlflowClient | None = None,
    release: Release | None = None,
    state_dir: Path | None = None,
) -> GateDecision:
    """A reviewer's promotion: through the same gate unless ``force``; who and why are tagged.

    Either way the version's Bento is built and checked (``release``) and the alias moves
    under the alias lock, after the champion was read again (``components/aliases.py``).

    Raises:
        RegistryError: no reason given, the version does not exist or is already champion.
        GateRejected: the gate refused the version (aliases unchanged).
        ServingError, AliasChanged: the Bento failed its check, or the champion moved
            meanwhile (aliases unchanged).
    """
    client = client or registry.make_client()
    if not reason.strip():
        raise RegistryError("a manual promotion needs a reason (--reason)")
    registry.get_version(client, model_name, version)
    if registry.aliases(client, model_name).get(registry.CHAMPION) == str(version):
        raise RegistryError(f"{model_name} v{version} is already the champion")
    if not force:
        report = load_any_evaluation(client, model_name, version)
        decision = apply_gate(
            model_name,
            str(version),
            report,
            gate_cfg,
            batch_size=batch_size,
            client=client,
            release=release,
            state_dir=state_dir,
            by=by,
        )
        # Who asked and why, under a name that says whether it happened.
        action = "promotion" if decision.promote else "promotion_attempt"
        registry.record_actor(client, model_name, str(version), action, by, reason)
        if not decision.promote:
            raise GateRejected(f"{model_name} v{version} {decision.reason}")
        return decision
    registry.record_actor(client, model_name, str(version), "promotion", by, reason)
    decide = partial(forced_decision, client, model_name, str(version), gate_cfg, reason, by)
    return settle(client, model_name, str(version), gate_cfg, decide, release, state_dir, by)
