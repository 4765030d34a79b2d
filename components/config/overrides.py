"""``--set dotted.key=value`` overrides and YAML files merged over ``params.yaml``.

An override is parsed here once, for loading the configuration and for showing or storing
the override itself without its secret (:func:`redact_override`, :func:`split_secret_overrides`).
"""

from __future__ import annotations

import copy
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from components.errors import ConfigError
from components.secrets import (
    SECRET_ENVIRONMENT,
    SECRET_SETTINGS,
    URI_SETTINGS,
    has_uri_credentials,
    redact_value,
)


def is_quoted(text: str) -> bool:
    return len(text) >= 2 and text[0] == text[-1] and text[0] in "'\""


def parse_override(assignment: str) -> tuple[list[str], Any]:
    """Split ``a.b.c=value`` into its key path and a YAML-parsed value."""
    key, sep, raw_value = assignment.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"override {assignment!r} is not of the form dotted.key=value")
    path = [part for part in key.strip().split(".") if part]
    if tuple(path) in SECRET_SETTINGS and not is_quoted(raw_value.strip()):
        return path, raw_value.strip() or None  # a key is text as typed: 0123 is no number
    try:
        value = yaml.safe_load(raw_value) if raw_value.strip() else None
    except yaml.YAMLError:
        value = raw_value
    return path, value


def set_dotted(tree: dict[str, Any], path: list[str], value: Any) -> None:
    """Set ``tree[path[0]][path[1]]... = value``, creating missing levels."""
    node = tree
    for part in path[:-1]:
        child = node.get(part)
        if not isinstance(child, dict):
            child = {} if child is None else child
            if not isinstance(child, dict):
                raise ConfigError(f"cannot set {'.'.join(path)}: {part} is not a section")
            node[part] = child
        node = child
    node[path[-1]] = value


def deep_merge(base: dict[str, Any], overlay: dict[str, Any]) -> dict[str, Any]:
    """Merge ``overlay`` into a copy of ``base``; nested dicts merge, the rest replaces."""
    merged = copy.deepcopy(base)
    for key, value in overlay.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def read_yaml_mapping(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not valid YAML: {exc}") from exc
    if loaded is None:
        return {}
    if not isinstance(loaded, dict):
        raise ConfigError(f"{path} must hold a mapping of sections, not {type(loaded).__name__}")
    return loaded


def parse_assignment(assignment: str) -> tuple[list[str], Any] | None:
    """``(path, value)`` of a ``dotted.key=value`` override; None when it is malformed."""
    try:
        return parse_override(assignment)
    except ConfigError:
        return None


def redact_override(assignment: str) -> str:
    """A ``--set dotted.key=value`` override as it may be stored or printed."""
    parsed = parse_assignment(assignment)
    if parsed is None:
        return assignment
    path, value = parsed
    redacted = redact_value(path, value)
    if redacted == value:
        return assignment
    key = assignment.partition("=")[0]
    shown = redacted if isinstance(redacted, str) else json.dumps(redacted)
    return f"{key}={shown}"


def redact_overrides(assignments: Sequence[str] | None) -> list[str] | None:
    return None if assignments is None else [redact_override(item) for item in assignments]


def split_secret_overrides(assignments: Sequence[str]) -> tuple[list[str], dict[str, str]]:
    """Move the secret ``--set`` overrides into environment variables.

    ``serving.api_key=K`` becomes ``RATCHET_API_KEY=K``, and a ``tracking.mlflow_uri`` or
    ``tracking.prefect_api_url`` with credentials becomes ``MLFLOW_TRACKING_URI`` or
    ``PREFECT_API_URL`` (each already beats its setting), so the retrain flow gets them
    through the run's environment, never as a flow parameter that Prefect stores.

    Returns:
        The overrides that stay, and the variables to set for the run.
    """
    kept: list[str] = []
    environment: dict[str, str] = {}
    for assignment in assignments:
        parsed = parse_assignment(assignment)
        path, value = parsed if parsed is not None else ((), None)
        variable = SECRET_ENVIRONMENT.get(tuple(path))
        secret = variable is not None and isinstance(value, str) and value != ""
        if secret and tuple(path) in URI_SETTINGS:
            secret = has_uri_credentials(str(value))
        if variable is not None and secret:
            environment[variable] = str(value)
        else:
            kept.append(assignment)
    return kept, environment
