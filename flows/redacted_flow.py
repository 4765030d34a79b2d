"""A Prefect flow whose ``overrides`` parameter reaches Prefect's database redacted.

Prefect stores every flow run's parameters (``Flow.serialize_parameters``) in its
database, where anyone with access to the API or the UI reads them. The retrain flow takes
``--set`` overrides as a parameter, and ``serving.api_key=...`` or a tracking URI with a
password among them would be stored in plain text. ``ratchet retrain`` already moves those
into the run's environment (``components.config.overrides.split_secret_overrides``);
this class covers every other caller (a script, a test) by storing the overrides as
``components.config.overrides.redact_override`` shows them, while the flow function itself
still receives the values it was called with.
"""

from __future__ import annotations

from typing import Any

from prefect import Flow
from prefect.client.schemas.objects import State
from prefect.futures import PrefectFuture

from components.config.overrides import redact_overrides

OVERRIDES_PARAMETER = "overrides"


class RedactedOverridesFlow(Flow[Any, Any]):
    """A flow that stores its ``overrides`` parameter with secrets shown as ``***``."""

    def serialize_parameters(
        self, parameters: dict[str, Any | PrefectFuture[Any] | State]
    ) -> dict[str, Any]:
        serialized = super().serialize_parameters(parameters)
        overrides = serialized.get(OVERRIDES_PARAMETER)
        if isinstance(overrides, list):
            serialized[OVERRIDES_PARAMETER] = redact_overrides([str(item) for item in overrides])
        return serialized


def with_redacted_overrides(flow: Flow[Any, Any]) -> RedactedOverridesFlow:
    """The same flow (function, name, hooks, options), storing its overrides redacted."""
    redacted = RedactedOverridesFlow.__new__(RedactedOverridesFlow)
    redacted.__dict__.update(flow.__dict__)
    return redacted
