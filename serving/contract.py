"""What every Ratchet Bento shares: its arguments, request limits, answers' model block,
metadata, batching and start-up authentication check.

The classifier (``serving/service.py``, ``POST /classify``) and the tagger
(``serving/token_service.py``, ``POST /entities``) import these, so both take the same
``{"texts": [...]}`` request under the same limits (in the types, so the OpenAPI spec states
them and BentoML answers 400 naming the field), the same API key and the same 4xx contract
(``serving/middleware.py``), and batch concurrent requests the same way.

``args`` is read once per process, when this module is imported: ``serving/build.py``
drops it (with the service modules) from ``sys.modules`` before each build.
"""

from __future__ import annotations

import functools
import gc
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Annotated, Any, Generic, NoReturn, TypeVar, cast

import anyio
import bentoml
from bentoml._internal.marshal.dispatcher import CorkDispatcher, NonBlockSema
from bentoml.exceptions import ServiceUnavailable
from pydantic import BaseModel, Field

from components.config import RegistryConfig, ServingConfig
from components.errors import ServingError
from serving.fast_path import DirectRouteMiddleware
from serving.middleware import (
    AUTHENTICATED_SCOPE_KEY,
    ApiKeyMiddleware,
    RequestBodyMiddleware,
    api_key_from_environment,
    missing_key_message,
)
from serving.predict import Precision, Runtime, container_cores
from serving.resources import plan_workers

logger = logging.getLogger(__name__)
DATA_MD5_TAGS = ("prepared_data_md5", "data.prepared_md5", "prepared_md5", "data_md5")


class ServeArgs(BaseModel):
    """Bento arguments, recorded by ``build_bento``; defaults are ``ServingConfig``'s."""

    model_tag: str = Field(f"{RegistryConfig().model_name}:latest", min_length=1)
    max_texts: int = Field(ServingConfig().max_texts, ge=1)
    max_chars: int = Field(ServingConfig().max_chars, ge=1)
    max_body_bytes: int = Field(ServingConfig().max_body_bytes, ge=1024)
    max_batch_size: int = Field(ServingConfig().max_batch_size, ge=1)
    max_latency_ms: int = Field(ServingConfig().max_latency_ms, ge=1)
    precision: Precision = ServingConfig().precision
    runtime: Runtime = ServingConfig().runtime
    num_threads: int | None = Field(ServingConfig().num_threads, ge=1)
    workers: int | None = Field(ServingConfig().workers, ge=1)
    access_log: bool = ServingConfig().access_log
    request_metrics: bool = ServingConfig().request_metrics
    trace_requests: bool = ServingConfig().trace_requests
    timeout_s: int = Field(60, ge=1)
    auth_required: bool = Field(
        False, description="Built with an API key configured: refuse to start without one."
    )


args = bentoml.use_arguments(ServeArgs)
# From the cores of the machine that imports this module: the server's, when it serves.
plan = plan_workers(container_cores(), args.workers, args.num_threads)

# Limits live in the types, so the OpenAPI spec states them and BentoML answers 400
# naming the offending field (e.g. ``texts.3``) before any code here runs.
# A blank text has nothing to classify or tag (training data refuses them too): 400, not a guess.
Text = Annotated[
    str,
    Field(
        min_length=1,
        max_length=args.max_chars,
        pattern=r"\S",
        description="One text (not blank).",
    ),
]


class ServedModel(BaseModel):
    name: str = Field(description="Registered model name.")
    version: str = Field(description="Registered model version.")
    data_md5: str | None = Field(description="md5 of the prepared training data.")


class ModelMetadata(BaseModel):
    name: str
    version: str
    bento_model: str = Field(description="Tag in the BentoML model store.")
    aliases: list[str] = Field(description="Registry aliases of this version at build time.")
    labels: list[str] = Field(description="Class names (a tagger's IOB2 tags) in id order.")
    metrics: dict[str, float]
    lineage: dict[str, str] | None = Field(
        description="Lineage tags of the registry version (run ids, paths, git state); "
        "null unless the caller gave the API key."
    )
    max_length: int = Field(description="Token window; longer texts are truncated.")
    precision: str
    runtime: str = Field(description="torch, onnx or onnx-int8 (serving.runtime).")


INFERENCE_ROUTES = ("/classify", "/entities")
# ``@bentoml.service`` options of every Ratchet service (each adds its own ``name``): one
# model worker per planned worker, each running its requests on one event-loop thread.
SERVICE_OPTIONS: dict[str, Any] = {
    "traffic": {"timeout": args.timeout_s},
    "resources": {"cpu": str(plan.workers * plan.threads)},
    "workers": plan.workers,
    "threads": 1,
    "logging": {"access": {"enabled": args.access_log}},
    "metrics": {"enabled": args.request_metrics},
}
if not args.trace_requests:  # BentoML records spans even with nothing to export them to
    SERVICE_OPTIONS["tracing"] = {"excluded_urls": ",".join(INFERENCE_ROUTES)}


def metadata_for(metadata: ModelMetadata, scope: Mapping[str, Any]) -> ModelMetadata:
    """``/metadata`` as a caller may see it: the lineage (local paths, run ids, git state)
    only when the request gave the API key."""
    if scope.get(AUTHENTICATED_SCOPE_KEY):
        return metadata
    return metadata.model_copy(update={"lineage": None})


def training_data_md5(lineage: dict[str, str]) -> str | None:
    """The prepared-data md5 among the lineage tags, under whichever name it was recorded."""
    return next((lineage[key] for key in DATA_MD5_TAGS if key in lineage), None)


def describe_stored_model(stored: Any, loaded: Any) -> tuple[ServedModel, ModelMetadata]:
    """The answers' model block and ``/metadata`` of a model from the BentoML store.

    Args:
        stored: the resolved ``bentoml.models.BentoModel`` (its ``info`` and metadata).
        loaded: the loaded model (``labels``, ``max_length``, ``precision``, ``runtime``).
    """
    info = stored.info
    meta: dict[str, Any] = dict(info.metadata)
    served = ServedModel(
        name=str(meta.get("name", info.tag.name)),
        version=str(meta.get("version", info.tag.version)),
        data_md5=training_data_md5(meta.get("lineage", {})),
    )
    metadata = ModelMetadata(
        name=served.name,
        version=served.version,
        bento_model=str(info.tag),
        aliases=list(meta.get("aliases", [])),
        labels=loaded.labels,
        metrics={k: float(v) for k, v in meta.get("metrics", {}).items()},
        lineage={k: str(v) for k, v in meta.get("lineage", {}).items()},
        max_length=loaded.max_length,
        precision=loaded.precision,
        runtime=loaded.runtime,
    )
    return served, metadata


def reject_overload() -> NoReturn:
    raise ServiceUnavailable("overloaded: the batch queue exceeds max_latency_ms; retry")


@functools.cache
def batch_requests_histogram() -> Any:
    """Requests served by each forward pass, in ``/metrics``. Created on first use, in the
    worker: BentoML points prometheus_client at its multiprocess folder after import.
    A process that imports this module again (``ratchet build`` drops it from
    ``sys.modules``) gets the histogram already registered."""
    from prometheus_client import REGISTRY, Histogram

    name = "ratchet_batch_requests"
    # prometheus_client has no public lookup; a second registration would raise.
    registered = getattr(REGISTRY, "_names_to_collectors", {}).get(name)
    if registered is not None:
        return registered
    return Histogram(
        name,
        "Requests whose texts shared one forward pass (1: scored alone).",
        buckets=[2**power for power in range(max(1, args.max_batch_size.bit_length()))],
    )


Row = TypeVar("Row")


class TextBatcher(Generic[Row]):
    """Texts of concurrent requests share one forward pass of ``predict``.

    BentoML's adaptive batcher (what ``@bentoml.api(batchable=True)`` uses), driven
    in-process: no extra HTTP hop, and only the service's validated API is exposed. The
    public batchable API splits its returned list per request, so keeping the response
    shape takes a second service behind ``bentoml.depends``; in 1.4.39 its client closes
    its session every 100 calls under the requests in flight (500s under load, BentoML
    #5540): measured in docs/serving.md, kept private until fixed. A request alone is
    scored at once; while others are in flight, requests queue and are scored together, at
    most ``max_batch_size`` texts, ``batches_in_flight`` batches at a time, each in a worker
    thread; one queued past ``max_latency_ms`` gets 503.
    ``ratchet_batch_requests`` in ``/metrics`` counts the requests each pass served.

    ``batches_in_flight``: 1 for a model that scores a batch in one forward pass on every
    intra-op thread (torch, onnx: a second batch would only fight it for the cores); 2 for
    onnx-int8, whose texts queue as single-text passes on a shared pool of pass threads:
    while one batch's passes run, the next is tokenised and queued behind them and the
    last one answered, so the pass threads do not wait for the event loop between batches.
    """

    def __init__(
        self, predict: Callable[[list[str]], list[Row]], batches_in_flight: int = 1
    ) -> None:
        self.predict = predict
        dispatcher: Any = CorkDispatcher(
            max_latency_in_ms=args.max_latency_ms,
            max_batch_size=args.max_batch_size,
            fallback=reject_overload,
            get_batch_size=len,
            batch_dim=(0, 0),
            shared_sema=NonBlockSema(batches_in_flight),
        )
        self.batched: Callable[[list[str]], Awaitable[list[Row]]] = dispatcher(self.score_requests)
        self.model_slot = anyio.CapacityLimiter(batches_in_flight)
        self.histogram = batch_requests_histogram()
        self.in_flight = 0

    async def __call__(self, texts: list[str]) -> list[Row]:
        """One answer per text, in order."""
        self.in_flight += 1
        try:
            if self.in_flight == 1:  # alone: batching could only add waiting
                self.histogram.observe(1)
                return await self.run_model(texts)
            return await self.batched(texts)
        finally:
            self.in_flight -= 1

    async def run_model(self, texts: list[str]) -> list[Row]:
        """Score texts in a worker thread, ``batches_in_flight`` at a time: torch and onnx run it as
        forward passes on every intra-op thread, onnx-int8 as one pass per text, those of a
        batch side by side on the classifier's threads."""
        return await anyio.to_thread.run_sync(self.predict, texts, limiter=self.model_slot)

    async def score_requests(self, requests: Sequence[list[str]]) -> list[list[Row]]:
        """One forward pass over the texts of several requests, answers split back."""
        self.histogram.observe(len(requests))
        rows = await self.run_model([text for texts in requests for text in texts])
        answers, start = [], 0
        for texts in requests:
            answers.append(rows[start : start + len(texts)])
            start += len(texts)
        return answers


def freeze_startup_objects() -> None:
    """Move every object alive once the model is loaded into the collector's permanent
    generation. A loaded service holds about 310,000 tracked objects (torch, transformers,
    BentoML, pydantic); a full collection walked them all, 165 ms on the 2-core Xeon and
    longer under load, and the garbage of a few hundred requests triggers one: the Bento's
    periodic p95-p99 stalls of 0.2-0.3 s at concurrency 32. Frozen, a full collection
    only walks what requests allocated since (``gc.freeze``, as forking servers use it)."""
    gc.collect()
    gc.freeze()


def check_api_key_at_startup() -> None:
    """Refuse to start a Bento built with an API key unless the server has one.

    Called from each service's ``@bentoml.on_startup`` hook: the worker stops with the
    reason ("Application startup failed") before it serves anything; in a container
    (``BENTOML_CONTAINERIZED``) the server then exits, elsewhere BentoML restarts the
    worker, which fails again. It runs only in a server, not where the class is
    instantiated in-process.

    Raises:
        ServingError: an empty ``RATCHET_API_KEY``, or no key for a Bento that needs one.
    """
    key = api_key_from_environment()  # raises on an empty RATCHET_API_KEY
    if key is None and args.auth_required:
        raise ServingError(missing_key_message())
    if key is None:
        logger.warning(
            "serving WITHOUT authentication: no RATCHET_API_KEY or RATCHET_API_KEY_FILE "
            "(anyone who reaches this port can call the model)"
        )


def add_request_checks(service: Any) -> None:
    """Authentication, then body checks, then the direct inference route, in front of a
    service (outermost first: refuse unauthenticated requests before reading their bodies)."""
    typed = cast("bentoml.Service[Any]", service)
    typed.add_asgi_middleware(ApiKeyMiddleware, auth_required=args.auth_required)
    typed.add_asgi_middleware(RequestBodyMiddleware, max_body_bytes=args.max_body_bytes)
    # Innermost: valid inference requests skip BentoML's per-request plumbing
    # (serving/fast_path.py); everything else reaches BentoML as before.
    typed.add_asgi_middleware(DirectRouteMiddleware)
