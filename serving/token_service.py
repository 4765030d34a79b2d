"""The BentoML service that serves a registered token classifier (named entities).

Built by ``ratchet build`` when the registry version is tagged
``task=token-classification`` (``serving/build.py``), run by ``ratchet serve``::

    ratchet -c configs/conll.yaml build && ratchet -c configs/conll.yaml serve --port 3001
    curl -s localhost:3001/entities -H 'content-type: application/json' \\
         -d '{"texts": ["Angela Merkel met Emmanuel Macron in Paris."]}'

``POST /entities`` takes raw texts (not pre-split words) and answers, per text, the
entities found with their type (``label``), ``text``, character ``start``/``end`` in the
text as sent and ``score`` (``components/token_inference.py`` says how words, sub-tokens
and IOB2 tags become entities). The request contract is the classifier's
(``serving/contract.py``): the same limits, API key, 4xx answers and adaptive batching of
concurrent requests; ``GET /metadata`` lists the tag set as ``labels``. The service is
named ``ratchet_tagger``, so a classifier Bento and a tagger Bento run side by side.

Runtime: torch only (fp32, or bf16 where the CPU has it natively); a tagger Bento is
built with ``runtime: torch`` whatever ``serving.runtime`` says (the ONNX export is the
sequence classifier's; ``serving/build.py`` records the fall-back as a Bento label).
"""

from __future__ import annotations

from typing import Annotated, Any

import bentoml
from fastapi import FastAPI, Request
from pydantic import BaseModel, Field

from components.token_inference import load_tagger, predict_entities
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
from serving.predict import configure_threads

EXAMPLE_INPUT: dict[str, list[str]] = {
    "texts": ["Angela Merkel met Emmanuel Macron in Paris.", "Zoë Ñúñez flew to São Paulo."]
}
Texts = Annotated[
    list[Text],
    Field(min_length=1, max_length=args.max_texts, examples=[EXAMPLE_INPUT["texts"]]),
]


class Entity(BaseModel):
    label: str = Field(description="Entity type, e.g. PER, LOC, ORG, MISC (the tag set's).")
    text: str = Field(description="The entity as written: the text from `start` to `end`.")
    start: int = Field(ge=0, description="Offset of its first character (code points).")
    end: int = Field(ge=0, description="Offset just past its last character.")
    score: float = Field(description="Mean probability of its words' tags.")


class TextEntities(BaseModel):
    entities: list[Entity] = Field(description="Entities in text order.")
    windows: int = Field(
        ge=0,
        description="Token windows the text was tagged in: 1 for a text within the model's "
        "window; a longer one is tagged in consecutive windows, cut after sentence ends "
        "where possible (no word is left untagged; words see no context across a cut).",
    )


class EntitiesResponse(BaseModel):
    model: ServedModel
    predictions: list[TextEntities]


metadata_app = FastAPI(title="metadata")


@bentoml.service(
    name="ratchet_tagger",
    **SERVICE_OPTIONS,
)
@bentoml.asgi_app(metadata_app, path="/")
class RatchetTagger:
    """Serves one token-classifier version from the BentoML model store."""

    bento_model = bentoml.models.BentoModel(args.model_tag)

    def __init__(self) -> None:
        configure_threads(plan.threads)
        stored: Any = self.bento_model  # resolved to the stored model on the instance
        self.tagger = load_tagger(stored.path_of("hf_model"), args.precision)
        self.served, self.metadata = describe_stored_model(stored, self.tagger)
        self.batcher = TextBatcher(self.tag_texts)
        self.tag_texts(EXAMPLE_INPUT["texts"])  # warm up before /readyz
        register_direct_route(RatchetTagger, "entities", self.answer)
        freeze_startup_objects()  # no full-heap collections while serving

    def __is_ready__(self) -> bool:
        return self.tagger is not None

    def tag_texts(self, texts: list[str]) -> list[dict]:
        return predict_entities(self.tagger, texts)

    async def answer(self, texts: list[str]) -> EntitiesResponse:
        """The answer to a valid request, by either path (serving/fast_path.py)."""
        rows = await self.batcher(texts)
        return EntitiesResponse(
            model=self.served, predictions=[TextEntities(**row) for row in rows]
        )

    @bentoml.api
    async def entities(self, texts: Texts) -> EntitiesResponse:
        """Find the named entities of up to `max_texts` raw texts, with character offsets."""
        return await self.answer(list(texts))

    @bentoml.on_startup
    def check_authentication(self) -> None:
        """Refuse to start a Bento built with an API key unless the server has one."""
        check_api_key_at_startup()

    @metadata_app.get("/metadata")
    def model_metadata(self, request: Request) -> ModelMetadata:
        """The served model's name, version, aliases, tag set and metrics; its lineage only
        for a caller that gave the API key."""
        return metadata_for(self.metadata, request.scope)


add_request_checks(RatchetTagger)
