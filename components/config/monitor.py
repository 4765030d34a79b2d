"""The ``monitor`` section: the inference log, drift checks and feedback-driven retrains."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from components.config.base import Section


class MonitorConfig(Section):
    exporter: Literal["file", "otlp", "off"] = Field(
        "file",
        description="Where the Bento's inference log goes: file writes JSON lines "
        "(bentoml.monitor's default exporter, rotated daily) under traffic/ in the state "
        "folder, which `ratchet monitor` reads; otlp sends them to otlp_endpoint (then "
        "`ratchet monitor` has nothing to read); off logs nothing.",
    )
    otlp_endpoint: str | None = Field(
        None, description="OTLP collector for exporter: otlp (e.g. http://collector:4318)."
    )
    keep_days: int = Field(
        30, ge=1, description="Daily inference-log files kept per server worker."
    )
    window: str = Field(
        "24h",
        pattern=r"^\d+(\.\d+)?[smhd]$",
        description="Default window of `ratchet monitor` (--since): logged traffic this recent.",
    )
    min_texts: int = Field(
        200,
        ge=10,
        description="Fewer texts in the window: not enough data (exit 3, drift null), never "
        "an alarm; the tests on a smaller sample would be noise.",
    )
    max_texts: int = Field(
        1000,
        ge=10,
        description="At most this many texts of the window and of the reference are compared "
        "(a seeded sample), which bounds the cost of the embedding permutation test.",
    )
    significance: float = Field(
        0.01,
        gt=0,
        lt=1,
        description="Family-wise level of the drift tests: each of the k tests drifts at "
        "p < significance / k (Bonferroni), so an hourly check raises about one false "
        "alarm in 1/significance runs on unchanged traffic.",
    )
    permutations: int = Field(
        1000,
        ge=20,
        description="Permutations of the embedding MMD test; its smallest p-value is "
        "1/(permutations+1), which must be under significance / 7 (the tests).",
    )
    seed: int = Field(0, description="Seed of the samples and permutations.")
    retrain_after_feedback_rows: int = Field(
        100,
        ge=1,
        description="`ratchet feedback export` emits ratchet.feedback.ready (which triggers "
        "retrain-on-demand) once the exported data set holds at least this many rows.",
    )
