"""Render a model card (markdown) for a registered model version.

The card is the version's description in the MLflow registry, so reviewers read it in the
UI and with ``ratchet registry show VERSION``: data and lineage, a metrics table, the
comparison with the champion, behavioural checks, the gate decision and the limitations.
Pure text in, text out.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from components.behaviour import CheckResult

HEADLINE_METRICS = (
    "accuracy",
    "f1_macro",
    "f1_weighted",
    "roc_auc",
    "log_loss",
    "ece",
    "latency_p50_ms_batch1",
    "latency_p99_ms_batch1",
    "throughput_texts_per_s_batch32",
    # token classifiers (data.task token-classification); f1 repeats entity_f1
    "f1",
    "entity_f1",
    "entity_precision",
    "entity_recall",
    "entity_f1_macro",
    "token_accuracy",
    "latency_p50_ms",
    "latency_p99_ms",
)
LOWER_IS_BETTER = {
    "log_loss",
    "ece",
    "latency_p50_ms_batch1",
    "latency_p99_ms_batch1",
    "latency_p50_ms",
    "latency_p99_ms",
}
TOKEN_TASK = "token-classification"
WEAK_SLICE_MARGIN = 0.05
DECISION_HEADING = "## Promotion decision"


@dataclass(frozen=True)
class CardInputs:
    """What a card shows; every field is plain data taken from the run and its lineage."""

    model_name: str
    version: str
    labels: list[str]
    metrics: Mapping[str, float]
    lineage: Mapping[str, str]
    data_source: str
    base_model: str
    training: Mapping[str, Any]
    champion_version: str | None = None
    champion_metrics: Mapping[str, float] | None = None
    behaviour: Sequence[CheckResult] = field(default_factory=list)
    task: str = "text-classification"


def format_number(value: float | None) -> str:
    if value is None:
        return "n/a"
    return f"{value:.4f}" if abs(value) < 100 else f"{value:,.1f}"


def metrics_table(metrics: Mapping[str, float], champion: Mapping[str, float] | None) -> str:
    header = "| metric | this version |" + (" champion | delta |" if champion else "")
    rule = "|---|---:|" + ("---:|---:|" if champion else "")
    rows = [header, rule]
    for name in HEADLINE_METRICS:
        if name not in metrics:
            continue
        row = f"| {name} | {format_number(metrics[name])} |"
        if champion:
            other = champion.get(name)
            delta = None if other is None else metrics[name] - other
            arrow = (
                "" if delta is None else (" (lower is better)" if name in LOWER_IS_BETTER else "")
            )
            row += (
                f" {format_number(other)} | {'n/a' if delta is None else f'{delta:+.4f}'}{arrow} |"
            )
        rows.append(row)
    return "\n".join(rows)


def per_class_table(metrics: Mapping[str, float], labels: Sequence[str]) -> str:
    return scores_table(metrics, "class", labels, "{kind}.{name}")


def per_type_table(metrics: Mapping[str, float]) -> str:
    """Entity-level precision, recall, F1 and support of each type (strict IOB2)."""
    prefix = "entity_f1."
    types = sorted(key[len(prefix) :] for key in metrics if key.startswith(prefix))
    return scores_table(metrics, "entity type", types, "entity_{kind}.{name}")


def scores_table(metrics: Mapping[str, float], title: str, names: Sequence[str], key: str) -> str:
    """Precision, recall, F1 and support per name; ``key`` formats a metric's key from
    ``kind`` (precision, recall, f1, support) and ``name``."""
    rows = [f"| {title} | precision | recall | F1 | support |", "|---|---:|---:|---:|---:|"]
    for name in names:
        values = [
            metrics.get(key.format(kind=kind, name=name)) for kind in ("precision", "recall", "f1")
        ]
        support = metrics.get(key.format(kind="support", name=name))
        cells = " | ".join(format_number(v) for v in values)
        rows.append(f"| {name} | {cells} | {'n/a' if support is None else int(support)} |")
    return "\n".join(rows)


def weak_slices(metrics: Mapping[str, float]) -> list[str]:
    """Slices whose accuracy trails the overall accuracy by more than 5 points."""
    overall = metrics.get("accuracy")
    if overall is None:
        return []
    weak = []
    for key, value in sorted(metrics.items()):
        if key.startswith("slice.") and key.endswith(".accuracy") and value < overall - 0.05:
            name = key[len("slice.") : -len(".accuracy")]
            examples = metrics.get(f"slice.{name}.examples")
            count = "" if examples is None else f", {int(examples)} examples"
            weak.append(f"{name}: accuracy {value:.3f}{count}")
    return weak


def behaviour_table(results: Sequence[CheckResult]) -> str:
    rows = ["| check | type | capability | pass rate | gate threshold |", "|---|---|---|---:|---:|"]
    for result in results:
        threshold = "—" if result.min_pass_rate is None else f"{result.min_pass_rate:.0%}"
        rows.append(
            f"| {result.name} | {result.type} | {result.capability} | "
            f"{result.pass_rate:.0%} ({result.passed}/{result.cases}) | {threshold} |"
        )
    return "\n".join(rows)


def limitations(inputs: CardInputs) -> list[str]:
    if inputs.task == TOKEN_TASK:
        notes = [
            f"Evaluated on the held-out test sentences of `{inputs.data_source}`; entity "
            "scores elsewhere (other domains, languages, entity types) are unknown.",
            "Words beyond the token window (model.max_length) are tagged O.",
        ]
        return notes + behaviour_notes(inputs)
    notes = [
        f"Evaluated on {int(inputs.metrics.get('test_examples', 0))} held-out examples from "
        f"`{inputs.data_source}`; accuracy elsewhere (other domains, languages, lengths) is "
        "unknown.",
        "Probabilities are calibrated only as far as the ECE above says; do not read them "
        "as certainties.",
    ]
    notes += [f"Weak slice — {line}." for line in weak_slices(inputs.metrics)]
    return notes + behaviour_notes(inputs)


def behaviour_notes(inputs: CardInputs) -> list[str]:
    """Failing behaviour checks and a dirty working tree, one note each."""
    notes = [
        f"Behaviour check `{result.name}` ({result.capability}) fails "
        f"{result.cases - result.passed} of {result.cases} cases."
        for result in inputs.behaviour
        if result.pass_rate < 1.0
    ]
    if inputs.lineage.get("git_dirty") in ("true", "True", "1"):
        notes.append("Built from a working tree with uncommitted changes (git_dirty).")
    return notes


def render_model_card(inputs: CardInputs) -> str:
    """The markdown card: summary, data and lineage, metrics, champion comparison, limits."""
    lineage_rows = "\n".join(
        f"| {key} | `{value}` |" for key, value in sorted(inputs.lineage.items())
    )
    training = ", ".join(f"{key}={value}" for key, value in inputs.training.items())
    token = inputs.task == TOKEN_TASK
    baseline = "all-O tagger" if token else "majority-class"
    if inputs.champion_version and inputs.champion_metrics:
        comparison = f"Compared with the champion, version {inputs.champion_version}:"
    else:
        comparison = (
            f"There is no champion yet: the gate's floors, the {baseline} baseline and the "
            "behavioural checks decide promotion."
        )
    if token:
        types = sorted({label[2:] for label in inputs.labels if label != "O"})
        summary = f"Token classifier (NER) of {len(types)} entity types: {', '.join(types)}"
    else:
        summary = f"Text classifier over {len(inputs.labels)} classes: {', '.join(inputs.labels)}"
    sections = [
        f"# {inputs.model_name} — version {inputs.version}",
        f"{summary}. Fine-tuned from `{inputs.base_model}` ({training}).",
        "## Data and lineage",
        f"Source: `{inputs.data_source}`. Test split md5: "
        f"`{inputs.lineage.get('test_split_md5', 'n/a')}`.",
        "| item | value |\n|---|---|\n" + lineage_rows,
        "## Metrics (frozen test split)",
        comparison,
        metrics_table(inputs.metrics, inputs.champion_metrics if inputs.champion_version else None),
        "### Per entity type" if token else "### Per class",
        per_type_table(inputs.metrics) if token else per_class_table(inputs.metrics, inputs.labels),
    ]
    if inputs.behaviour:
        sections += ["## Behavioural checks", behaviour_table(inputs.behaviour)]
    sections += ["## Limitations", "\n".join(f"- {note}" for note in limitations(inputs))]
    return "\n\n".join(sections) + "\n"


def decision_table(decision: Mapping[str, Any]) -> str:
    """The gate's comparisons as a table: current champion, best champion, majority baseline."""
    metric = decision.get("metric")
    if not metric or decision.get("challenger_metric") is None:
        return ""
    rows = [
        f"Gated on `{metric}` over {decision.get('test_examples', 0)} test examples "
        f"(test split md5 `{decision.get('test_split_md5') or 'n/a'}`).",
        "",
        f"| compared with | version | its {metric} | this version | difference |",
        "|---|---|---:|---:|---:|",
    ]
    for title, key in (
        ("current champion", "comparison"),
        ("best champion on this test split", "best_comparison"),
    ):
        comparison = decision.get(key)
        if comparison:
            rows.append(
                f"| {title} | v{comparison.get('champion_version') or '?'} | "
                f"{comparison['champion_metric']:.4f} | {comparison['challenger_metric']:.4f} | "
                f"{comparison['metric_difference']:+.4f} |"
            )
        else:
            rows.append(f"| {title} | none | — | {decision['challenger_metric']:.4f} | — |")
    majority = decision.get("majority")
    if majority:
        rows.append(
            f"| always '{majority['label']}' (accuracy) | — | "
            f"{majority['baseline_accuracy']:.4f} | {majority['challenger_accuracy']:.4f} | "
            f"{majority['challenger_accuracy'] - majority['baseline_accuracy']:+.4f} |"
        )
    return "\n".join(rows)


def with_decision(card: str, decision: Mapping[str, Any]) -> str:
    """The card with its promotion-decision section added or replaced."""
    body = card.split(DECISION_HEADING)[0].rstrip()
    lines = [
        DECISION_HEADING,
        f"**{str(decision['outcome']).upper()}** — {decision['reason']}",
    ]
    table = decision_table(decision)
    if table:
        lines.append(table)
    if decision.get("rescore_note"):
        lines.append(f"Note: {decision['rescore_note']}.")
    if decision.get("forced"):
        lines.append("The gate was bypassed with `--force`.")
    return body + "\n\n" + "\n\n".join(lines) + "\n"


REVIEW_HEADING = "## Review"


def with_review(card: str, review: Mapping[str, Any]) -> str:
    """The card with its human-review section (outcome, who, when, why) added or replaced."""
    body, _, rest = card.partition(REVIEW_HEADING)
    after = rest.partition("\n## ")[2]  # a section that followed the review stays
    lines = [
        REVIEW_HEADING,
        f"**{str(review['state']).upper()}** by {review['by']} at {review['at']}: "
        f"{review['reason']}",
    ]
    card = body.rstrip() + "\n\n" + "\n\n".join(lines) + "\n"
    return card + (f"\n## {after}" if after else "")
