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
from typing import Annotated, Any

import bentoml
from fastapi import FastAPI, Request
from pydantic import BaseModel, Field

from serving.contract import (
    SERVICE_OPTIONS,
    ModelMetadata,
    ServedModel,
    Text,
    TextBatcher,
    add_request_checks,
    args,
    check_api_key_at_startup,
    describe_stored_model,
    freeze_startup_objects,
    metadata_for,
    plan,
)
from serving.fast_path import register_direct_route
from serving.predict import configure_threads, load_classifier, predict_texts
from serving.traffic_log import (
    FeedbackReceipt,
    TrafficLog,
    label_field,
    settings_from_environment,
)

logger = logging.getLogger(__name__)
EXAMPLE_INPUT: dict[str, list[str]] = {
    "texts": ["a gripping, beautifully acted film", "a dull and lifeless script"]
}
Texts = Annotated[
    list[Text],
    Field(min_length=1, max_length=args.max_texts, examples=[EXAMPLE_INPUT["texts"]]),
]


class TextPrediction(BaseModel):
    label: str = Field(description="The most probable class.")
    score: float = Field(description="Probability of `label`.")
    probabilities: dict[str, float] = Field(description="Probability of every class.")
    truncated: bool = Field(description="The text was longer than the model's token window.")


class ClassifyResponse(BaseModel):
    model: ServedModel
    predictions: list[TextPrediction]


metadata_app = FastAPI(title="metadata")


@bentoml.service(
    name="ratchet_classifier",
    **SERVICE_OPTIONS,
)
@bentoml.asgi_app(metadata_app, path="/")
class RatchetClassifier:
    """Serves one classifier version from the BentoML model store."""

    bento_model = bentoml.models.BentoModel(args.model_tag)

    def __init__(self) -> None:
        threads = configure_threads(plan.threads)
        # On the instance, BentoML has already resolved the reference to the stored model.
        stored: Any = self.bento_model
        self.classifier = load_classifier(
            stored.path_of("hf_model"), args.precision, runtime=args.runtime, threads=threads
        )
        self.served, self.metadata = describe_stored_model(stored, self.classifier)
        self.traffic = TrafficLog(  # the inference log: serving/traffic_log.py
            settings_from_environment(),
            stored.path_of("hf_model"),
            self.served.name,
            self.served.version,
        )
        # Concurrent requests share forward passes (serving/contract.py); onnx-int8's
        # single-text passes run on a pool, which a second batch in flight keeps busy.
        self.batcher = TextBatcher(
            functools.partial(predict_texts, self.classifier),
            batches_in_flight=1 if self.classifier.passes is None else 2,
        )
        predict_texts(self.classifier, EXAMPLE_INPUT["texts"])  # warm up before /readyz
        register_direct_route(RatchetClassifier, "classify", self.answer)
        freeze_startup_objects()  # no full-heap collections while serving

    def __is_ready__(self) -> bool:
        return self.classifier is not None

    async def answer(self, texts: list[str]) -> ClassifyResponse:
        """The answer to a valid request, by either path (serving/fast_path.py)."""
        rows = await self.batcher(texts)
        self.traffic.record(texts, rows)
        return ClassifyResponse(
            model=self.served, predictions=[TextPrediction(**row) for row in rows]
        )

    @bentoml.api
    async def classify(self, texts: Texts) -> ClassifyResponse:
        """Classify up to `max_texts` texts; each gets its label and class probabilities."""
        return await self.answer(list(texts))

    @bentoml.api
    async def feedback(
        self, text: Text, label: Annotated[str, label_field(args.model_tag)]
    ) -> FeedbackReceipt:
        """Record the right label of a text, for the next retrain (`ratchet feedback export`)."""
        return FeedbackReceipt(**self.traffic.feedback(text, label, self.metadata.labels))

    @bentoml.on_shutdown
    def flush_inference_log(self) -> None:
        """Write what the inference log still holds (its writer wakes every 0.25 s)."""
        self.traffic.close()

    @bentoml.on_startup
    def check_authentication(self) -> None:
        """Refuse to start a Bento built with an API key unless the server has one
        (``serving.contract.check_api_key_at_startup``)."""
        check_api_key_at_startup()

    @metadata_app.get("/metadata")
    def model_metadata(self, request: Request) -> ModelMetadata:
        """The served model's registry name, version, aliases and metrics; its lineage
        (local paths, run ids, git state) only for a caller that gave the API key."""
        return metadata_for(self.metadata, request.scope)


add_request_checks(RatchetClassifier)
