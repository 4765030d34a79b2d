"""Prefect events Ratchet emits (``ratchet.drift.detected``, ``ratchet.feedback.ready``);
deployment triggers in ``prefect.yaml`` start ``retrain-on-demand`` on them.

Events go to the Prefect server named by ``PREFECT_API_URL``; without one (the embedded
default) there is nobody to react, so nothing is emitted (and the caller is told).
"""

from __future__ import annotations

import logging
import os
from typing import Any

logger = logging.getLogger(__name__)

DRIFT_EVENT = "ratchet.drift.detected"
FEEDBACK_EVENT = "ratchet.feedback.ready"


def model_resource(
    model_name: str, version: str | None = None, params: str | None = None
) -> dict[str, str]:
    """The event's resource: the registered model (and version), and the model's
    params.yaml relative to the project root (``ratchet.params``), which
    retrain-on-demand's trigger passes on so that the run retrains that model."""
    resource = {"prefect.resource.id": f"ratchet.model.{model_name}", "ratchet.model": model_name}
    if version is not None:
        resource["ratchet.version"] = str(version)
    if params is not None:
        resource["ratchet.params"] = params
    return resource


def emit_ratchet_event(
    name: str,
    model_name: str,
    payload: dict[str, Any],
    version: str | None = None,
    params: str | None = None,
) -> bool:
    """Emit a Prefect event about a model; returns whether it was sent."""
    if not os.environ.get("PREFECT_API_URL"):
        logger.info("no PREFECT_API_URL: %s not emitted", name)
        return False
    from prefect.events import emit_event

    resource = model_resource(model_name, version, params)
    event = emit_event(event=name, resource=resource, payload=payload)
    return event is not None
