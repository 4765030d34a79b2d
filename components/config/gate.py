"""The ``eval`` and ``gate`` sections: how a model is scored and when it is promoted."""

from __future__ import annotations

from typing import Literal

from pydantic import (
    Field,
)

from components.config.base import Section


class EvalConfig(Section):
    batch_size: int = Field(64, ge=1, description="Batch size for scoring.")
    length_buckets: list[int] = Field(
        default_factory=lambda: [10, 20, 40], description="Word-count bucket edges for slices."
    )
    behaviour_checks: str | None = Field(
        "auto",
        description="CheckList-style cases (a YAML suite file). auto picks the shipped suite "
        "in configs/behaviour/ written for the data's labels, or runs none (and says so); a "
        "file named here must be written for the data's labels, else the retrain stops "
        "before training; null skips the checks.",
    )
    latency_samples: int = Field(50, ge=1, description="Single-text calls timed for p50/p99.")
    top_mistakes: int = Field(20, ge=0, description="Most confident mistakes to keep.")
    calibration_bins: int = Field(10, ge=2, description="Bins for ECE and reliability plots.")


GATE_METRICS = ("f1_macro", "accuracy", "f1_weighted", "entity_f1")
GateMetric = Literal["f1_macro", "accuracy", "f1_weighted", "entity_f1"]
# The metrics each data.task can be gated on.
TASK_GATE_METRICS = {
    "text-classification": ("f1_macro", "accuracy", "f1_weighted"),
    "token-classification": ("entity_f1",),
}


class GateConfig(Section):
    metric: GateMetric = Field(
        "f1_macro",
        description="Metric the gate compares models on (tolerance and the comparison with "
        "the champions). f1_macro, the default, weighs every class equally, so a model cannot "
        "win by favouring a large class; accuracy suits balanced label sets. 'Significantly "
        "worse' is the one-sided exact McNemar test for accuracy and the one-sided paired "
        "bootstrap bound of the metric difference for the others. entity_f1 (entity-level "
        "micro-F1, strict IOB2) is the metric of data.task token-classification.",
    )
    min_accuracy: float | None = Field(
        None,
        ge=0,
        le=1,
        description="Absolute accuracy floor; null (the default) sets none, since a good "
        "accuracy depends on the data set (classes, balance, difficulty): set one for yours.",
    )
    min_f1_macro: float | None = Field(
        None,
        ge=0,
        le=1,
        description="Absolute macro-F1 floor; null (the default) sets none, for the same "
        "reason as min_accuracy. Degenerate models are caught by min_class_recall and the "
        "majority-baseline test whatever the data set.",
    )
    min_class_recall: float | None = Field(
        0.05,
        ge=0,
        le=1,
        description="Every class present in the test split must be recalled at least this "
        "often. 0.05 is below what guessing gets on up to 20 classes, yet a model that "
        "(nearly) never predicts a class fails it; null turns the check off.",
    )
    min_majority_error_reduction: float | None = Field(
        0.1,
        ge=0,
        lt=1,
        description="Beat the majority-class baseline (always predicting the test split's "
        "most frequent class): accuracy must remove at least this share of the baseline's "
        "errors, i.e. reach majority + share * (1 - majority), AND be significantly better "
        "than the baseline (one-sided exact McNemar on the same examples, p < significance). "
        "A share, not accuracy points, so it means the same on balanced and on 99:1 sets "
        "(0.1: a 50:50 set needs 0.55, a 90:10 set 0.91). 0 keeps only the significance "
        "test; null turns both off.",
    )
    min_entity_f1: float | None = Field(
        0.5,
        ge=0,
        le=1,
        description="data.task token-classification: entity micro-F1 floor (strict IOB2). "
        "NER's baseline, the all-O tagger, scores 0, and the challenger must also beat it "
        "significantly (one-sided paired bootstrap over sentences). 0.5: a tagger that "
        "misses or mangles half the entities is of no use to anyone, while ordinary "
        "taggers score 0.85-0.92 on CoNLL-2003 and a tiny one reaches 0.8; null sets none.",
    )
    min_type_recall: float | None = Field(
        0.05,
        ge=0,
        le=1,
        description="data.task token-classification: every entity type present in the test "
        "split must be recalled (strict: type and both ends right) at least this often, as "
        "gate.min_class_recall does for classes: a tagger that (nearly) never finds a type "
        "fails it; null turns the check off.",
    )
    min_test_examples: int = Field(
        100,
        ge=1,
        description="Fewest test examples (sentences, for a token classifier) the gate "
        "decides on; below it the challenger is rejected (too few to tell models apart: "
        "at 100 examples one accuracy point is one example).",
    )
    tolerance: float = Field(
        0.005,
        ge=0,
        le=1,
        description="Largest drop of gate.metric still promoted, both against the current "
        "champion and against the best model that ever held champion on the same test split "
        "(a budget, so a series of small drops cannot add up).",
    )
    significance: float = Field(
        0.05,
        gt=0,
        lt=1,
        description="Level of the one-sided paired tests: 'challenger worse than the "
        "champion' and 'challenger better than the majority baseline'.",
    )
    min_behaviour_pass_rate: float | None = Field(
        None, ge=0, le=1, description="Each behavioural check must pass at least this share."
    )
    behaviour_thresholds: bool = Field(
        True,
        description="Whether the min_pass_rate written on a suite's checks are gate "
        "conditions; false keeps the checks as reported metrics only (tiny test models).",
    )
    require_approval: bool = Field(
        False,
        description="A challenger that passes gets the alias `pending-review` (its Bento built "
        "and checked) instead of `champion`; `ratchet registry approve VERSION --reason ...` "
        "or `reject` decides. false: the gate promotes unattended.",
    )
