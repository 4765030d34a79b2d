"""The whole configuration (:class:`RatchetConfig`) and :func:`load_config`."""

from __future__ import annotations

import copy
import hashlib
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml
from pydantic import (
    Field,
    ValidationError,
)

from components.config.base import Section
from components.config.data import DataConfig
from components.config.gate import EvalConfig, GateConfig
from components.config.model import ModelConfig, PretrainConfig, TrainConfig
from components.config.monitor import MonitorConfig
from components.config.overrides import deep_merge, parse_override, read_yaml_mapping, set_dotted
from components.config.serving import RegistryConfig, ServingConfig, TrackingConfig
from components.config.task import check_task_settings
from components.errors import ConfigError
from components.secrets import redact_value

DEFAULT_PARAMS_FILE = "params.yaml"


# Settings for the state folder's upkeep, not for what a run builds.
UPKEEP_KEYS: dict[str, Sequence[str]] = {
    "tracking": ["cache_max_age_days"],
    "serving": ["log_texts"],
    "monitor": list(MonitorConfig.model_fields),
}
# Secrets never enter a hash (a new API key builds the same model): left out of every key.
UNHASHED_KEYS: dict[str, Sequence[str]] = {"serving": ["api_key", "api_key_file"]}


class RatchetConfig(Section):
    """The whole configuration, one section per pipeline stage."""

    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    pretrain: PretrainConfig = Field(default_factory=PretrainConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    gate: GateConfig = Field(default_factory=GateConfig)
    registry: RegistryConfig = Field(default_factory=RegistryConfig)
    serving: ServingConfig = Field(default_factory=ServingConfig)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)
    monitor: MonitorConfig = Field(default_factory=MonitorConfig)

    def build_hash(self) -> str:
        """Hash of the whole config less the keys that cannot change what a run builds
        (the ``config_hash`` tag: a nightly run skips when it equals the champion's)."""
        return self.section_hash(leave_out=UPKEEP_KEYS)

    def section_hash(
        self, *sections: str, leave_out: dict[str, Sequence[str]] | None = None
    ) -> str:
        """Short stable hash of the named sections (all when none), for cache keys;
        ``leave_out`` maps a section to keys of it that do not count."""
        dumped = self.model_dump(mode="json")
        chosen = {name: dumped[name] for name in sections} if sections else dumped
        for section, keys in [*UNHASHED_KEYS.items(), *(leave_out or {}).items()]:
            for key in keys:
                chosen.get(section, {}).pop(key, None)
        payload = json.dumps(chosen, sort_keys=True).encode()
        return hashlib.sha256(payload).hexdigest()[:16]

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)


def describe_validation_error(error: ValidationError) -> str:
    """One line per problem, each naming the dotted key."""
    lines = []
    for problem in error.errors():
        key = ".".join(str(part) for part in problem["loc"]) or "(root)"
        if problem["type"] == "extra_forbidden":
            lines.append(f"unknown key '{key}'")
        else:
            shown = redact_value([str(part) for part in problem["loc"]], problem.get("input"))
            lines.append(f"'{key}': {problem['msg']} (got {shown!r})")
    return "invalid configuration:\n  " + "\n  ".join(lines)


def config_from_mapping(raw: dict[str, Any]) -> RatchetConfig:
    """Validate a raw mapping, then check the settings that depend on ``data.task``."""
    try:
        config = RatchetConfig.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(describe_validation_error(exc)) from exc
    check_task_settings(config)
    return config


def load_config(
    params_file: str | Path | Mapping[str, Any] | None = DEFAULT_PARAMS_FILE,
    config_files: Sequence[str | Path] = (),
    overrides: Sequence[str] = (),
) -> RatchetConfig:
    """Load ``params.yaml``, merge extra YAML files over it, then apply ``--set`` overrides.

    Args:
        params_file: the base parameters, or their mapping when already read (the
            flow reads params.yaml once, for this and for its DVC check); ``None``
            starts from the built-in defaults.
        config_files: YAML files merged over the base in order (profiles such as demo).
        overrides: ``dotted.key=value`` strings applied last; values are parsed as YAML.

    Returns:
        The validated, frozen configuration.

    Raises:
        ConfigError: a file is missing or malformed, a key is unknown or a value has the
            wrong type; the message names the key.
    """
    return config_from_mapping(merged_mapping(params_file, config_files, overrides))


def merged_mapping(
    params_file: str | Path | Mapping[str, Any] | None,
    config_files: Sequence[str | Path] = (),
    overrides: Sequence[str] = (),
) -> dict[str, Any]:
    """The raw mapping :func:`load_config` validates: the base, the files merged over it
    in order, then the ``dotted.key=value`` overrides (``ratchet new`` writes it)."""
    raw: dict[str, Any] = {}
    if isinstance(params_file, Mapping):
        raw = copy.deepcopy(dict(params_file))
    elif params_file is not None:
        raw = read_yaml_mapping(Path(params_file))
    for extra in config_files:
        raw = deep_merge(raw, read_yaml_mapping(Path(extra)))
    for assignment in overrides:
        path, value = parse_override(assignment)
        set_dotted(raw, path, value)
    return raw
