"""The one redaction of secrets in the configuration: what is shown, logged or stored.

Two kinds of setting hold secrets: ``serving.api_key`` (shown as ``***`` wherever the
configuration is dumped) and the credentials inside ``tracking.*`` URIs (the user name,
password and key-like query values of ``http://user:pass@mlflow:5000``,
``postgresql://u:p@db/mlflow`` or a pre-signed ``s3://...?X-Amz-Signature=...``, shown as
``http://***@mlflow:5000``). The config's serializers (``components/config/``), MLflow
params, ``lineage/config.yaml``, ``ratchet config show``, ``registry compare`` and the
retrain flow's Prefect parameters all go through the functions here (``--set`` overrides
through ``components/config/overrides.py``, built on :func:`redact_value`), so there is one
answer to "what does a secret look like when it is written down": ``***``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

REDACTED = "***"
# Settings whose whole value is a secret, and settings holding URIs that may carry one.
SECRET_SETTINGS: frozenset[tuple[str, ...]] = frozenset({("serving", "api_key")})
URI_SETTINGS: frozenset[tuple[str, ...]] = frozenset(
    {("tracking", "mlflow_uri"), ("tracking", "prefect_api_url"), ("tracking", "dvc_remote_url")}
)
# Query parameters that carry credentials: AWS/GCS/Azure signatures and keys, tokens...
SECRET_QUERY_KEY = re.compile(
    r"key|secret|token|passw|pwd|sig|credential|auth|session", re.IGNORECASE
)
# Where the process environment carries a secret setting instead of a flow parameter.
SECRET_ENVIRONMENT: dict[tuple[str, ...], str] = {
    ("serving", "api_key"): "RATCHET_API_KEY",
    ("tracking", "mlflow_uri"): "MLFLOW_TRACKING_URI",
    ("tracking", "prefect_api_url"): "PREFECT_API_URL",
}


def mask_uri_credentials(uri: str) -> str:
    """``uri`` with its user info and credential-like query values replaced by ``***``.

    ``http://user:pass@mlflow:5000`` -> ``http://***@mlflow:5000``;
    ``s3://bucket/x?X-Amz-Signature=abc&region=eu`` -> ``s3://bucket/x?X-Amz-Signature=***&region=eu``.
    Paths and URIs without credentials come back unchanged.
    """
    try:
        parts = urlsplit(uri)
    except ValueError:  # not a URI at all (an unbalanced "[" in a host): show nothing of it
        return REDACTED
    netloc = parts.netloc
    if "@" in netloc:
        netloc = f"{REDACTED}@{netloc.rpartition('@')[2]}"
    query = parts.query
    if query:
        pairs = parse_qsl(query, keep_blank_values=True)
        if any(SECRET_QUERY_KEY.search(key) for key, _ in pairs):
            masked = [
                (key, REDACTED if SECRET_QUERY_KEY.search(key) else value) for key, value in pairs
            ]
            query = urlencode(masked, safe="*")
    if netloc == parts.netloc and query == parts.query:
        return uri
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def has_uri_credentials(uri: str) -> bool:
    return mask_uri_credentials(uri) != uri


def redact_value(path: Sequence[str], value: Any) -> Any:
    """``value`` of the setting at ``path`` as it may be shown: secrets as ``***``, URI
    credentials masked; mappings (a whole section) are redacted key by key."""
    key = tuple(path)
    if isinstance(value, Mapping):
        return {name: redact_value((*key, str(name)), item) for name, item in value.items()}
    if value is None:
        return None
    if key in SECRET_SETTINGS:
        return REDACTED
    if key in URI_SETTINGS and isinstance(value, str):
        return mask_uri_credentials(value)
    return value


def redact_tree(tree: Mapping[str, Any]) -> dict[str, Any]:
    """A configuration mapping (e.g. a version's recorded ``lineage/config.yaml``, which
    versions registered before redaction existed hold in plain text) with secrets redacted."""
    return dict(redact_value((), tree))


def redact_flat(flat: Mapping[str, Any]) -> dict[str, Any]:
    """Dotted-key settings (``serving.api_key``...) with secrets redacted."""
    return {key: redact_value(key.split("."), value) for key, value in flat.items()}
