"""One typed configuration for the whole platform, loaded from ``params.yaml``.

``params.yaml`` is the single source: DVC reads it for stage params, and the flows,
the CLI and the tests load it through :func:`load_config`. Overrides come from extra
YAML files merged over it (``--config FILE``) and from ``--set dotted.key=value``.
Unknown keys and wrong types are rejected with a message naming the key.

One module per group of sections (``data``, ``model`` with ``pretrain`` and ``train``,
``gate`` with ``eval``, ``serving`` with ``registry`` and ``tracking``), the whole in
``root``, the override parsing in ``overrides``; import the names from this package.
"""

from components.config.base import Section
from components.config.data import TASKS, DataChecksConfig, DataConfig, SplitConfig, Task
from components.config.gate import GATE_METRICS, EvalConfig, GateConfig, GateMetric
from components.config.model import ModelConfig, PretrainConfig, ScratchModelConfig, TrainConfig
from components.config.monitor import MonitorConfig
from components.config.overrides import (
    deep_merge,
    is_quoted,
    parse_override,
    read_yaml_mapping,
    set_dotted,
)
from components.config.root import (
    DEFAULT_PARAMS_FILE,
    UNHASHED_KEYS,
    UPKEEP_KEYS,
    RatchetConfig,
    config_from_mapping,
    describe_validation_error,
    load_config,
    merged_mapping,
)
from components.config.serving import RegistryConfig, ServingConfig, TrackingConfig
from components.config.task import (
    check_task_settings,
    tag_problems,
    task_problems,
)

__all__ = [
    "DEFAULT_PARAMS_FILE",
    "GATE_METRICS",
    "TASKS",
    "UNHASHED_KEYS",
    "UPKEEP_KEYS",
    "DataChecksConfig",
    "DataConfig",
    "EvalConfig",
    "GateConfig",
    "GateMetric",
    "ModelConfig",
    "MonitorConfig",
    "PretrainConfig",
    "RatchetConfig",
    "RegistryConfig",
    "ScratchModelConfig",
    "Section",
    "ServingConfig",
    "SplitConfig",
    "Task",
    "TrackingConfig",
    "TrainConfig",
    "config_from_mapping",
    "deep_merge",
    "describe_validation_error",
    "is_quoted",
    "load_config",
    "merged_mapping",
    "parse_override",
    "read_yaml_mapping",
    "set_dotted",
    "check_task_settings",
    "tag_problems",
    "task_problems",
]
