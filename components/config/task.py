"""Settings that must agree with ``data.task``, checked when the configuration loads.

A token classifier and a text classifier read other data, train another head and are
scored on other metrics; a setting meant for the other task is caught here, before any
data is read or any compute is spent, with the setting to change named.
"""

from __future__ import annotations

from pathlib import PurePath
from typing import Protocol

from components.config.data import DataConfig
from components.config.gate import TASK_GATE_METRICS, GateConfig
from components.config.model import ModelConfig
from components.errors import ConfigError


class RatchetConfig(Protocol):
    """The sections these checks read (the root config, without importing it: it calls
    these checks when it loads)."""

    @property
    def data(self) -> DataConfig: ...
    @property
    def gate(self) -> GateConfig: ...
    @property
    def model(self) -> ModelConfig: ...


# File types each task reads (a folder source is checked when it is read).
TABULAR_SUFFIXES = frozenset({".csv", ".tsv", ".parquet"})
TOKEN_SUFFIXES = frozenset({".txt", ".conll"})
OUTSIDE_TAG = "O"


def tag_problems(tags: list[str]) -> list[str]:
    """The names in a tag set that are not IOB2 tags (``O``, ``B-TYPE``, ``I-TYPE``)."""
    return [
        tag for tag in tags if tag != OUTSIDE_TAG and not (tag[:2] in ("B-", "I-") and len(tag) > 2)
    ]


def task_problems(config: RatchetConfig) -> list[str]:
    """Every setting that does not fit ``data.task``, one line each (empty: all fit)."""
    task, data = config.data.task, config.data
    problems = []
    if config.gate.metric not in TASK_GATE_METRICS[task]:
        problems.append(
            f"gate.metric {config.gate.metric!r} is not a metric of data.task {task!r}: "
            f"use one of {list(TASK_GATE_METRICS[task])}"
        )
    suffix = PurePath(data.source).suffix.lower()
    if task == "token-classification":
        if data.labels is not None:
            bad = tag_problems(list(data.labels))
            if bad or OUTSIDE_TAG not in data.labels:
                problems.append(
                    f"data.labels {list(data.labels)} is not an IOB2 tag set (not tags: "
                    f"{bad or 'none'}; 'O' needed) for data.task 'token-classification': "
                    "list the tags (O, B-PER, I-PER, ...) or set data.labels: null to infer them"
                )
        if suffix in TABULAR_SUFFIXES:
            problems.append(
                f"data.source {data.source} is a {suffix} table, but data.task "
                "'token-classification' reads CoNLL files (.txt/.conll) or JSONL with "
                "tokens/tags lists: point data.source at those, or set data.task: "
                "text-classification"
            )
        if config.model.pooling != "cls":
            problems.append(
                "model.pooling applies to data.task 'text-classification' only: a token "
                "classifier labels every token; remove model.pooling"
            )
    elif suffix in TOKEN_SUFFIXES:
        problems.append(
            f"data.source {data.source} is a {suffix} file, which Ratchet reads as CoNLL "
            "token/tag data: set data.task: token-classification (with data.labels: null "
            "and gate.metric: entity_f1), or convert it to CSV/TSV/JSONL/Parquet"
        )
    return problems


def check_task_settings(config: RatchetConfig) -> None:
    """Raise when a setting does not fit ``data.task``.

    Raises:
        ConfigError: listing every mismatch, each with the setting to change.
    """
    problems = task_problems(config)
    if problems:
        raise ConfigError(
            f"settings do not fit data.task {config.data.task!r}:\n  " + "\n  ".join(problems)
        )
