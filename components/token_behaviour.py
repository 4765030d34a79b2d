"""Behavioural checks for token classifiers (NER), declared in YAML like the text ones.

A suite file declares ``task: token-classification`` and its entity types as ``labels``
(e.g. ``configs/behaviour/ner-conll-en.yaml`` for PER/ORG/LOC/MISC), and lists checks:

- ``MFT`` (minimum functionality): in each case's text the tagger must find every listed
  entity, ``[type, text]`` ("John Smith moved to Paris" has a PER and a LOC span). An
  all-``O`` tagger finds none, so it fails every case.
- ``INV`` (invariance): each ``[original, changed]`` pair keeps its entities: with
  ``keep: types`` the sequence of entity types (a person's name swapped keeps its PER
  span), with ``keep: entities`` the types and texts (a neutral clause added changes no
  entity). A pair whose original gets no entity fails: invariance of nothing tests
  nothing, and an all-``O`` tagger would otherwise pass it.

Texts are split into words as CoNLL does (punctuation apart) and tagged with a
``tag(sentences) -> tags`` function, so the checks are testable without a model. Results
are :class:`components.behaviour.CheckResult`, so the gate (``min_pass_rate``), the card
and the metrics treat them as the text checks. ``eval.behaviour_checks: auto`` picks the
shipped NER suite whose entity types are the data's (:func:`token_suite_for_labels`).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from components.behaviour import (
    MAX_FAILURES_KEPT,
    TOKEN_SUITE_TASK,
    CheckResult,
    read_suite,
    resolve_suite,
)
from components.errors import ConfigError
from components.token_data import entity_types
from components.token_evaluate import sentence_entities

Tagger = Callable[[list[list[str]]], list[list[str]]]
WORDS = re.compile(r"\w+(?:['’.-]\w+)*|[^\w\s]")
Entity = tuple[str, str]  # (type, text)


class EntityCase(BaseModel):
    """An MFT case: a text and the entities it must get."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    text: str = Field(min_length=1, description="The sentence, as a user writes it.")
    entities: list[tuple[str, str]] = Field(
        min_length=1, description="[type, text] of every entity the tagger must find."
    )


class EntityCheck(BaseModel):
    """One declared NER check; which fields apply depends on ``type``."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(min_length=1, description="Unique name, used in metrics keys.")
    type: Literal["MFT", "INV"] = Field(description="CheckList test type.")
    capability: str = Field("general", description="Capability tested.")
    description: str = Field("", description="What the check shows when it fails.")
    cases: list[EntityCase] = Field(default_factory=list, description="MFT cases.")
    pairs: list[tuple[str, str]] = Field(
        default_factory=list, description="INV: [original, changed] sentence pairs."
    )
    keep: Literal["types", "entities"] = Field(
        "entities", description="INV: what the change keeps (entity types, or types and texts)."
    )
    min_pass_rate: float | None = Field(
        None, ge=0, le=1, description="Gate condition: refuse promotion below this pass rate."
    )

    @model_validator(mode="after")
    def _fields_for_type(self) -> EntityCheck:
        if self.type == "MFT" and not self.cases:
            raise ValueError(f"MFT check {self.name!r} needs cases")
        if self.type == "INV" and not self.pairs:
            raise ValueError(f"INV check {self.name!r} needs pairs")
        return self


class EntitySuite(BaseModel):
    """A NER suite: its entity types and checks."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    task: Literal["token-classification"] = Field(description="Marks a NER suite.")
    labels: list[str] = Field(min_length=1, description="Entity types (PER, LOC, ...), sorted.")
    checks: list[EntityCheck] = Field(min_length=1)

    @model_validator(mode="after")
    def _names_and_types_known(self) -> EntitySuite:
        names = [check.name for check in self.checks]
        if len(set(names)) != len(names):
            raise ValueError(f"check names repeat: {names}")
        if self.labels != sorted(self.labels):
            raise ValueError(f"labels must be sorted: {sorted(self.labels)}")
        for check in self.checks:
            for case in check.cases:
                unknown = {kind for kind, _ in case.entities} - set(self.labels)
                if unknown:
                    raise ValueError(f"check {check.name!r} names unknown types {unknown}")
        return self


def split_words(text: str) -> list[str]:
    """A text's words as CoNLL splits them: punctuation stands apart."""
    return WORDS.findall(text)


def tagged_entities(sentences: list[list[str]], tagger: Tagger) -> list[list[Entity]]:
    """Per sentence, its predicted entities as (type, text), in order."""
    found = sentence_entities(tagger(sentences))
    return [
        [
            (kind, " ".join(words[start:end]))
            for kind, start, end in sorted(spans, key=lambda e: e[1])
        ]
        for words, spans in zip(sentences, found, strict=True)
    ]


def run_entity_check(check: EntityCheck, tagger: Tagger) -> CheckResult:
    """Run one check against a tagger and count the passing cases."""
    failures: list[dict[str, Any]] = []
    passed: list[bool] = []
    if check.type == "MFT":
        found = tagged_entities([split_words(case.text) for case in check.cases], tagger)
        for case, entities in zip(check.cases, found, strict=True):
            missing = [list(e) for e in case.entities if tuple(e) not in entities]
            passed.append(not missing)
            if missing:
                failures.append({"text": case.text, "missing": missing, "got": entities})
    else:
        before = tagged_entities([split_words(pair[0]) for pair in check.pairs], tagger)
        after = tagged_entities([split_words(pair[1]) for pair in check.pairs], tagger)
        for (original, changed), old, new in zip(check.pairs, before, after, strict=True):
            if check.keep == "types":
                kept = [kind for kind, _ in old] == [kind for kind, _ in new]
            else:
                kept = old == new
            passed.append(bool(old) and kept)
            if not passed[-1]:
                failures.append(
                    {"original": original, "changed": changed, "before": old, "after": new}
                )
    return CheckResult(
        name=check.name,
        type=check.type,
        capability=check.capability,
        cases=len(passed),
        passed=sum(passed),
        min_pass_rate=check.min_pass_rate,
        failures=failures[:MAX_FAILURES_KEPT],
    )


def run_entity_suite(suite: EntitySuite, tags: Sequence[str], tagger: Tagger) -> list[CheckResult]:
    """Run every check of ``suite`` with ``tagger``, whose tag set is ``tags``.

    Raises:
        ConfigError: the suite was written for other entity types.
    """
    if entity_types(tags) != suite.labels:
        raise ConfigError(
            f"behaviour suite is for entity types {suite.labels}, the model has "
            f"{entity_types(tags)}"
        )
    return [run_entity_check(check, tagger) for check in suite.checks]


def load_entity_suite(path: Path) -> EntitySuite:
    """Read and validate a NER suite file.

    Raises:
        ConfigError: the file is missing, not YAML, or a check is malformed.
    """
    return read_suite(path, EntitySuite, "NER behaviour suite")


def token_suite_for_labels(
    setting: str | None, tags: Sequence[str], project_root: Path
) -> tuple[EntitySuite | None, str]:
    """The NER suite ``eval.behaviour_checks`` resolves to for a tag set: ``auto`` picks
    the shipped NER suite whose entity types are the data's (or none, and says so); a
    suite named explicitly must be a NER suite for these types.

    Returns:
        (the suite or None, the notice saying which and why).

    Raises:
        ConfigError: a named suite is missing, malformed or written for other types.
    """
    return resolve_suite(
        setting,
        entity_types(tags),
        project_root,
        load_entity_suite,
        lambda task: task == TOKEN_SUITE_TASK,
    )
