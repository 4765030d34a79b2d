"""The ``registry``, ``serving`` and ``tracking`` sections: where models live and run."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Literal

from pydantic import (
    Field,
    SecretStr,
    field_serializer,
    field_validator,
)

from components.config.base import Section
from components.secrets import REDACTED, mask_uri_credentials


class RegistryConfig(Section):
    model_name: str = Field("ratchet-sst2", min_length=1, description="Registered model name.")
    experiment: str = Field("ratchet", min_length=1, description="MLflow experiment name.")


class ServingConfig(Section):
    host: str = Field("127.0.0.1", description="Address `ratchet serve` binds.")
    port: int = Field(3000, ge=1, le=65535, description="Port `ratchet serve` binds.")
    alias: str = Field("champion", description="Registry alias a Bento is built from.")
    max_texts: int = Field(64, ge=1, description="Most texts in one request.")
    max_chars: int = Field(10_000, ge=1, description="Longest text accepted, in characters.")
    max_body_bytes: int = Field(
        1_000_000,
        ge=1024,
        description="Largest request body (413 above it). The default holds max_texts texts "
        "of max_chars plain ASCII characters; JSON spends up to 6 bytes on an escaped or "
        "non-ASCII character (12 on an emoji), so raise it for long non-Latin texts.",
    )
    max_batch_size: int = Field(64, ge=1, description="Adaptive batching: most texts a batch.")
    max_latency_ms: int = Field(
        10_000, ge=1, description="Adaptive batching: a request queued longer gets 503."
    )
    precision: Literal["fp32", "bf16"] = Field("fp32", description="Inference dtype on CPU.")
    runtime: Literal["torch", "onnx", "onnx-int8"] = Field(
        "onnx-int8",
        description="How the Bento runs the model: torch (as evaluated), onnx (the model "
        "exported to ONNX, run by ONNX Runtime with graph optimisation) or onnx-int8 (the "
        "same graph, weights dynamically quantised to int8). An exported runtime is built "
        "only after it scores the whole test split like the evaluated torch model (parity: "
        "onnx label agreement >= 99.5% and accuracy within 0.5 points, onnx-int8 accuracy "
        "within 1 point); the figures become parity.* version tags and Bento labels. Default "
        "onnx-int8: on a 2-core Xeon the SST-2 champion scored 1.38x torch's batched "
        "sentences/s and 3.66x its one-at-a-time rate, 0.46 points below its accuracy "
        "(benchmarks/runtimes.py).",
    )
    num_threads: int | None = Field(
        None,
        ge=1,
        description="Threads per model worker: torch's (and onnx's) intra-op threads; for "
        "onnx-int8, which scores one text per forward pass, how many single-threaded passes "
        "run side by side. null = the cores the server may use shared out among the workers.",
    )
    workers: int | None = Field(
        None,
        ge=1,
        description="Model worker processes (each holds the model and batches its own "
        "requests); null = 1 below 8 cores, else one per 4 cores (serving/resources.py).",
    )
    access_log: bool = Field(
        False,
        description="BentoML's access log: a line per request (path, status, sizes, "
        "latency) on the server's output. Off by default: it cost about 0.1 ms of CPU per "
        "request, a third of the server's per-request work besides the model on the 2-core "
        "Xeon (benchmarks/serve_overhead.py; 6-9% more requests/s at concurrency 32 "
        "without it). The inference log records every answered request, /metrics counts "
        "requests by status and latency, and errors are logged either way.",
    )
    request_metrics: bool = Field(
        True,
        description="BentoML's per-request Prometheus metrics on /metrics (request counts, "
        "latency histograms, requests in progress). About 0.1 ms of CPU per request on "
        "the 2-core Xeon (16%, benchmarks/serve_overhead.py). Off removes /metrics, and "
        "with it ratchet_batch_requests.",
    )
    trace_requests: bool = Field(
        False,
        description="Trace the inference routes (/classify, /entities) with BentoML's "
        "OpenTelemetry spans. BentoML records four spans per request even when no tracing "
        "exporter is configured (about 0.09 ms of CPU per request on the 2-core Xeon, "
        "benchmarks/serve_overhead.py), so they are off by default; turn this on when "
        "BentoML's tracing exports somewhere. Other routes are traced as BentoML does.",
    )
    log_texts: bool = Field(
        False,
        description="Keep each served text in the inference log (traffic/ in the state "
        "folder). Off by default: the log keeps a hash, the length and the features drift "
        "checks need, not what users wrote.",
    )
    api_key: SecretStr | None = Field(
        None,
        description="Required X-API-Key when set; RATCHET_API_KEY overrides it. Shown and "
        "stored as *** everywhere (MLflow params, lineage, reports) and never hashed; prefer "
        "RATCHET_API_KEY or api_key_file to keeping the key in params.yaml.",
    )
    api_key_file: str | None = Field(
        None,
        description="A file holding the API key (e.g. a mounted secret), read when the "
        "server starts; relative to the project root. RATCHET_API_KEY_FILE overrides it.",
    )

    @field_validator("api_key")
    @classmethod
    def _api_key_not_blank(cls, value: SecretStr | None) -> SecretStr | None:
        # An empty key would turn authentication off: null says that, "" is a mistake.
        if value is not None and not value.get_secret_value().strip():
            raise ValueError("is empty: set a key or null (no authentication)")
        return value

    @field_serializer("api_key")
    def _redact_api_key(self, value: SecretStr | None) -> str | None:
        return None if value is None else REDACTED


class TrackingConfig(Section):
    mlflow_uri: str | None = Field(
        None,
        description="MLflow tracking URI; null uses SQLite in the state folder. "
        "MLFLOW_TRACKING_URI overrides it.",
    )
    prefect_api_url: str | None = Field(
        None, description="Prefect API; null uses the ephemeral API. PREFECT_API_URL overrides."
    )
    dvc_remote_url: str | None = Field(
        None, description="DVC remote (e.g. s3://bucket/path); null uses the state folder."
    )
    cache_max_age_days: float | None = Field(
        14,
        ge=0,
        description="Step caches in the state folder (model folders in artifacts/, "
        "checkpoints/, evaluations/) that no run has written or reused for this many days "
        "are deleted when a retrain starts; registered models and Bentos are never touched. "
        "null keeps every cache.",
    )

    @field_serializer("mlflow_uri", "prefect_api_url", "dvc_remote_url")
    def _mask_credentials(self, uri: str | None) -> str | None:
        return None if uri is None else mask_uri_credentials(uri)

    def __repr_args__(self) -> Iterator[tuple[str | None, Any]]:
        # repr() and str() (a log line, a traceback) mask credentials as dumps do.
        for name, value in super().__repr_args__():
            yield name, mask_uri_credentials(value) if isinstance(value, str) else value
