"""The BentoML service that serves the registry's champion classifier.

Built into a Bento by ``ratchet build`` (see ``serving/build.py``), run by ``ratchet serve``::

    ratchet build --alias champion && ratchet serve
    curl -s localhost:3000/classify -H 'content-type: application/json' \\
         -d '{"texts": ["a gripping, beautifully acted film"]}'

The Bento's arguments (recorded by ``build_bento``, see ``bentoml get <tag>``) name the
BentoML model to load and the request limits. ``POST /classify`` validates a request
(limits are in its types, so the OpenAPI spec states them) and queues its texts on
BentoML's adaptive batcher, so texts from concurrent requests share one forward pass;
``ratchet_batch_requests`` in ``/metrics`` counts the requests each forward pass served.
BentoML's own ``/healthz`` (alive), ``/readyz`` (model loaded) and ``/metrics``
(Prometheus) stay; ``GET /metadata`` is added (the full lineage only for a caller that gave
the API key: unauthenticated callers see the model's name, version, labels and metrics).

A Bento built while an API key was configured records ``auth_required`` (never the key):
it refuses to start without a non-empty ``RATCHET_API_KEY`` or ``RATCHET_API_KEY_FILE``.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Annotated, Any, NoReturn, cast

import anyio
import bentoml
from bentoml._internal.marshal.dispatcher import CorkDispatcher
from bentoml.exceptions import ServiceUnavailable
from fastapi import FastAPI, Request
from pydantic import BaseModel, Field

from components.config import RegistryConfig, ServingConfig
from components.errors import ServingError
from serving.middleware import (
    AUTHENTICATED_SCOPE_KEY,
    ApiKeyMiddleware,
    RequestBodyMiddleware,
    api_key_from_environment,
    missing_key_message,
)
from serving.predict import (
    Precision,
    Runtime,
    configure_threads,
    container_cores,
    load_classifier,
    predict_texts,
)
from serving.resources import plan_workers
from serving.traffic_log import (
    FeedbackReceipt,
    TrafficLog,
    label_field,
    settings_from_environment,
)

logger = logging.getLogger(__name__)
DATA_MD5_TAGS = ("prepared_data_md5", "data.prepared_md5", "prepared_md5", "data_md5")
EXAMPLE_INPUT: dict[str, list[str]] = {
    "texts": ["a gripping, beautifully acted film", "a dull and lifeless script"]
}


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
    timeout_s: int = Field(60, ge=1)
    auth_required: bool = Field(
        False, description="Built with an API key configured: refuse to start without one."
    )


args = bentoml.use_arguments(ServeArgs)
# From the cores of the machine that imports this module: the server's, when it serves.
plan = plan_workers(container_cores(), args.workers, args.num_threads)

# Limits live in the types, so the OpenAPI spec states them and BentoML answers 400
# naming the offending field (e.g. ``texts.3``) before any code here runs.
# A blank text has nothing to classify (training data refuses them too): 400, not a guess.
Text = Annotated[
    str,
    Field(
        min_length=1,
        max_length=args.max_chars,
        pattern=r"\S",
        description="One text to classify (not blank).",
    ),
]
Texts = Annotated[
    list[Text],
    Field(min_length=1, max_length=args.max_texts, examples=[EXAMPLE_INPUT["texts"]]),
]


class TextPrediction(BaseModel):
    label: str = Field(description="The most probable class.")
    score: float = Field(description="Probability of `label`.")
    probabilities: dict[str, float] = Field(description="Probability of every class.")
    truncated: bool = Field(description="The text was longer than the model's token window.")


class ServedModel(BaseModel):
    name: str = Field(description="Registered model name.")
    version: str = Field(description="Registered model version.")
    data_md5: str | None = Field(description="md5 of the prepared training data.")


class ClassifyResponse(BaseModel):
    model: ServedModel
    predictions: list[TextPrediction]


class ModelMetadata(BaseModel):
    name: str
    version: str
    bento_model: str = Field(description="Tag in the BentoML model store.")
    aliases: list[str] = Field(description="Registry aliases of this version at build time.")
    labels: list[str] = Field(description="Class names in id order.")
    metrics: dict[str, float]
    lineage: dict[str, str] | None = Field(
        description="Lineage tags of the registry version (run ids, paths, git state); "
        "null unless the caller gave the API key."
    )
    max_length: int = Field(description="Token window; longer texts are truncated.")
    precision: str
    runtime: str = Field(description="torch, onnx or onnx-int8 (serving.runtime).")


metadata_app = FastAPI(title="metadata")


def training_data_md5(lineage: dict[str, str]) -> str | None:
    """The prepared-data md5 among the lineage tags, under whichever name it was recorded."""
    return next((lineage[key] for key in DATA_MD5_TAGS if key in lineage), None)


def reject_overload() -> NoReturn:
    raise ServiceUnavailable("overloaded: the batch queue exceeds max_latency_ms; retry")


@functools.cache
def batch_requests_histogram() -> Any:
    """Requests served by each forward pass, in ``/metrics``. Created on first use, in the
    worker: BentoML points prometheus_client at its multiprocess folder after import."""
    from prometheus_client import Histogram

    return Histogram(
        "ratchet_batch_requests",
        "Requests whose texts shared one forward pass (1: scored alone).",
        buckets=[2**power for power in range(max(1, args.max_batch_size.bit_length()))],
    )


@bentoml.service(
    name="ratchet_classifier",
    traffic={"timeout": args.timeout_s},
    resources={"cpu": str(plan.workers * plan.threads)},
    workers=plan.workers,
    threads=1,
)
@bentoml.asgi_app(metadata_app, path="/")
class RatchetClassifier:
    """Serves one classifier version from the BentoML model store."""

    bento_model = bentoml.models.BentoModel(args.model_tag)

    def __init__(self) -> None:
        threads = configure_threads(plan.threads)
        # On the instance, BentoML has already resolved the reference to the stored model.
        stored: Any = self.bento_model
        info = stored.info
        self.classifier = load_classifier(
            stored.path_of("hf_model"), args.precision, runtime=args.runtime, threads=threads
        )
        meta: dict[str, Any] = dict(info.metadata)
        self.served = ServedModel(
            name=str(meta.get("name", info.tag.name)),
            version=str(meta.get("version", info.tag.version)),
            data_md5=training_data_md5(meta.get("lineage", {})),
        )
        self.metadata = ModelMetadata(
            name=self.served.name,
            version=self.served.version,
            bento_model=str(info.tag),
            aliases=list(meta.get("aliases", [])),
            labels=self.classifier.labels,
            metrics={k: float(v) for k, v in meta.get("metrics", {}).items()},
            lineage={k: str(v) for k, v in meta.get("lineage", {}).items()},
            max_length=self.classifier.max_length,
            precision=self.classifier.precision,
            runtime=self.classifier.runtime,
        )
        self.traffic = TrafficLog(  # the inference log: serving/traffic_log.py
            settings_from_environment(),
            stored.path_of("hf_model"),
            self.served.name,
            self.served.version,
        )
        # BentoML's adaptive batcher (what `@bentoml.api(batchable=True)` uses), driven
        # in-process: texts of concurrent requests share one forward pass, with no extra
        # HTTP hop, and only this service's validated `/classify` is exposed. The public
        # batchable API splits its returned list per request, so keeping the response
        # shape takes a second service behind `bentoml.depends`; in 1.4.39 its client
        # closes its session every 100 calls under the requests in flight (500s under
        # load, BentoML #5540): measured in docs/serving.md, kept private until fixed.
        dispatcher: Any = CorkDispatcher(
            max_latency_in_ms=args.max_latency_ms,
            max_batch_size=args.max_batch_size,
            fallback=reject_overload,
            get_batch_size=len,
            batch_dim=(0, 0),
        )
        self.batched_predict: Callable[[list[str]], Awaitable[list[dict]]] = dispatcher(
            self.predict_requests
        )
        self.model_slot = anyio.CapacityLimiter(1)
        self.batch_requests = batch_requests_histogram()
        self.in_flight = 0
        predict_texts(self.classifier, EXAMPLE_INPUT["texts"])  # warm up before /readyz

    def __is_ready__(self) -> bool:
        return self.classifier is not None

    @bentoml.api
    async def classify(self, texts: Texts) -> ClassifyResponse:
        """Classify up to `max_texts` texts; each gets its label and class probabilities."""
        self.in_flight += 1
        try:
            if self.in_flight == 1:  # alone: batching could only add waiting
                self.batch_requests.observe(1)
                rows = await self.run_model(list(texts))
            else:
                rows = await self.batched_predict(list(texts))
        finally:
            self.in_flight -= 1
        self.traffic.record(list(texts), rows)
        return ClassifyResponse(
            model=self.served, predictions=[TextPrediction(**row) for row in rows]
        )

    @bentoml.api
    async def feedback(
        self, text: Text, label: Annotated[str, label_field(args.model_tag)]
    ) -> FeedbackReceipt:
        """Record the right label of a text, for the next retrain (`ratchet feedback export`)."""
        return FeedbackReceipt(**self.traffic.feedback(text, label, self.metadata.labels))

    async def run_model(self, texts: list[str]) -> list[dict]:
        """Score texts in a worker thread, one batch at a time: torch and onnx run it as
        forward passes on every intra-op thread, onnx-int8 as one pass per text, those of a
        batch side by side on the classifier's threads."""
        return await anyio.to_thread.run_sync(
            predict_texts, self.classifier, texts, limiter=self.model_slot
        )

    async def predict_requests(self, requests: Sequence[list[str]]) -> list[list[dict]]:
        """One forward pass over the texts of several requests, answers split back."""
        self.batch_requests.observe(len(requests))
        rows = await self.run_model([text for texts in requests for text in texts])
        answers, start = [], 0
        for texts in requests:
            answers.append(rows[start : start + len(texts)])
            start += len(texts)
        return answers

    @bentoml.on_startup
    def check_authentication(self) -> None:
        """Refuse to start a Bento built with an API key unless the server has one.

        A start-up hook: the worker stops with the reason ("Application startup failed")
        before it serves anything; in a container (``BENTOML_CONTAINERIZED``) the server
        then exits, elsewhere BentoML restarts the worker, which fails again. It runs only
        in a server, not where the class is instantiated in-process.
        """
        key = api_key_from_environment()  # raises on an empty RATCHET_API_KEY
        if key is None and args.auth_required:
            raise ServingError(missing_key_message())
        if key is None:
            logger.warning(
                "serving WITHOUT authentication: no RATCHET_API_KEY or RATCHET_API_KEY_FILE "
                "(anyone who reaches this port can call the model)"
            )

    @metadata_app.get("/metadata")
    def model_metadata(self, request: Request) -> ModelMetadata:
        """The served model's registry name, version, aliases and metrics; its lineage
        (local paths, run ids, git state) only for a caller that gave the API key."""
        if request.scope.get(AUTHENTICATED_SCOPE_KEY):
            return self.metadata
        return self.metadata.model_copy(update={"lineage": None})


# Outermost first: refuse unauthenticated requests before reading their bodies.
service = cast("bentoml.Service[RatchetClassifier]", RatchetClassifier)
service.add_asgi_middleware(ApiKeyMiddleware, auth_required=args.auth_required)
service.add_asgi_middleware(RequestBodyMiddleware, max_body_bytes=args.max_body_bytes)
