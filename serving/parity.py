"""Parity before promotion: an exported runtime must score like the evaluated torch model.

``serving/build.py`` calls :func:`score_parity` before it stores a model for the ``onnx``
or ``onnx-int8`` runtime: the Hugging Face folder is exported (``components/export.py``),
the WHOLE test split is scored with the exported graph and compared with the predictions
evaluation recorded in torch. The rules (:func:`parity_failures`):

- ``onnx`` (fp32): label agreement >= 99.5%, accuracy within 0.5 points, and every class
  probability within 1e-4 of torch's (fp32 differs only by summation order);
- ``onnx-int8``: accuracy within 1 point (agreement and the probability gap reported:
  quantised weights move probabilities by ~1e-2 and flip near-ties).

The figures become ``parity.*`` tags and a model-card section on the version and labels on
the Bento; a failure raises :class:`ParityError` (:func:`parity_error`) before anything is
stored or built, so no alias can move to an unproven Bento.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from components.errors import ParityError

MIN_AGREEMENT = {"onnx": 0.995}
MAX_ACCURACY_DELTA = {"onnx": 0.005, "onnx-int8": 0.01}
MAX_PROB_DIFF = {"onnx": 1e-4}
PARITY_TAG_PREFIX = "parity."
CARD_HEADING = "## Serving runtime parity"


@dataclass(frozen=True)
class ParityReport:
    """How an exported runtime scored the test split against the evaluated torch model."""

    runtime: str
    examples: int
    agreement: float  # share of texts with the same predicted label
    torch_accuracy: float
    runtime_accuracy: float
    accuracy_delta: float  # runtime minus torch
    max_prob_diff: float
    per_channel: bool | None = None  # int8 weights per channel (None: not quantised)

    def tags(self) -> dict[str, str]:
        """``parity.<name>`` strings for version tags and Bento labels."""
        values = {name: value for name, value in asdict(self).items() if value is not None}
        return {
            f"{PARITY_TAG_PREFIX}{name}": (
                f"{value:.6g}" if isinstance(value, float) else str(value)
            )
            for name, value in values.items()
        }


def probability_columns(predictions: pd.DataFrame) -> list[str]:
    return [column for column in predictions if column.startswith("prob_")]


def measure_parity(
    evaluated: pd.DataFrame, probabilities: np.ndarray, runtime: str
) -> ParityReport:
    """Compare the runtime's ``probabilities`` with evaluation's ``predictions.parquet``.

    Args:
        evaluated: text, label, predicted and ``prob_<class>`` per test example.
        probabilities: the runtime's, same rows and class order.
    """
    torch_probabilities = evaluated[probability_columns(evaluated)].to_numpy(dtype=float)
    labels = evaluated["label"].to_numpy()
    predicted = probabilities.argmax(axis=1)
    torch_accuracy = float(np.mean(evaluated["predicted"].to_numpy() == labels))
    runtime_accuracy = float(np.mean(predicted == labels))
    return ParityReport(
        runtime=runtime,
        examples=len(evaluated),
        agreement=float(np.mean(predicted == evaluated["predicted"].to_numpy())),
        torch_accuracy=torch_accuracy,
        runtime_accuracy=runtime_accuracy,
        accuracy_delta=runtime_accuracy - torch_accuracy,
        max_prob_diff=float(np.max(np.abs(probabilities - torch_probabilities), initial=0.0)),
    )


def parity_failures(
    report: ParityReport, max_prob_diff: dict[str, float] | None = None
) -> list[str]:
    """One line per rule the report breaks (empty: parity holds)."""
    limits = MAX_PROB_DIFF if max_prob_diff is None else max_prob_diff
    runtime, failures = report.runtime, []
    if runtime in MIN_AGREEMENT and report.agreement < MIN_AGREEMENT[runtime]:
        failures.append(
            f"label agreement {report.agreement:.2%} is below {MIN_AGREEMENT[runtime]:.1%}"
        )
    if abs(report.accuracy_delta) > MAX_ACCURACY_DELTA[runtime]:
        failures.append(
            f"accuracy {report.runtime_accuracy:.4f} against torch's "
            f"{report.torch_accuracy:.4f} is {abs(report.accuracy_delta) * 100:.2f} points "
            f"off (at most {MAX_ACCURACY_DELTA[runtime] * 100:g})"
        )
    if runtime in limits and report.max_prob_diff > limits[runtime]:
        failures.append(
            f"a class probability differs from torch's by {report.max_prob_diff:.2g} "
            f"(at most {limits[runtime]:g})"
        )
    return failures


def runtime_predictions(evaluated: pd.DataFrame, probabilities: np.ndarray) -> pd.DataFrame:
    """``evaluated`` with the runtime's predictions: what its Bento must answer."""
    frame = evaluated.copy()
    frame["predicted"] = probabilities.argmax(axis=1).astype("int64")
    frame[probability_columns(evaluated)] = probabilities
    return frame


def score_parity(
    model_dir: Path,
    runtime: str,
    evaluated: pd.DataFrame,
    max_length: int | None,
    batch_size: int,
) -> tuple[ParityReport, pd.DataFrame]:
    """Export ``model_dir`` for ``runtime`` and score the whole test split with it.

    Returns:
        (the report, the runtime's predictions in ``predictions.parquet`` form).

    Raises:
        ServingError: the export failed.
    """
    from components.export import Probe, export_runtime
    from components.inference import load_classifier, predict_proba

    texts = evaluated["text"].astype(str).tolist()
    torch_probabilities = evaluated[probability_columns(evaluated)].to_numpy(dtype=float)
    exported = export_runtime(model_dir, runtime, Probe(texts, torch_probabilities))
    classifier = load_classifier(model_dir, max_length=max_length, runtime=runtime)
    probabilities, _ = predict_proba(classifier, texts, batch_size)
    report = measure_parity(evaluated, probabilities, runtime)
    if "per_channel" in exported:
        report = ParityReport(**{**asdict(report), "per_channel": exported["per_channel"]})
    return report, runtime_predictions(evaluated, probabilities)


def parity_error(report: ParityReport, failures: list[str]) -> ParityError:
    """The error that stops the build, naming every broken rule."""
    return ParityError(
        f"the {report.runtime} runtime does not score the {report.examples} test texts like "
        f"the evaluated torch model: {'; '.join(failures)} (agreement "
        f"{report.agreement:.2%}, accuracy delta {report.accuracy_delta * 100:+.2f} points). "
        "No Bento is built and no alias moves; serve with serving.runtime: torch, or "
        "retrain"
    )


def card_section(report: ParityReport, passed: bool) -> str:
    """The model card's parity section (markdown)."""
    rows = [
        ("runtime", report.runtime),
        ("result", "passed" if passed else "FAILED"),
        ("test examples", str(report.examples)),
        ("label agreement with torch", f"{report.agreement:.2%}"),
        (
            "accuracy (torch -> runtime)",
            f"{report.torch_accuracy:.4f} -> {report.runtime_accuracy:.4f}",
        ),
        ("accuracy delta (points)", f"{report.accuracy_delta * 100:+.2f}"),
        ("max probability difference", f"{report.max_prob_diff:.2g}"),
    ]
    if report.per_channel is not None:
        rows.append(("int8 weights", "per channel" if report.per_channel else "per tensor"))
    table = "\n".join(f"| {name} | {value} |" for name, value in rows)
    return f"{CARD_HEADING}\n\n| | |\n|---|---|\n{table}\n"


def with_parity(card: str, section: str) -> str:
    """``card`` with its parity section replaced (or appended)."""
    head, found, tail = card.partition(CARD_HEADING)
    if found:
        rest = tail.split("\n## ", 1)
        tail = "\n## " + rest[1] if len(rest) == 2 else ""
    return head.rstrip() + "\n\n" + section + tail


def record_parity(
    model_name: str, version: str, report: ParityReport, passed: bool, exported: Path | None
) -> None:
    """Record the figures on the registry version: ``parity.*`` tags (``parity.passed``
    too), the model card's parity section and, when parity held, the exported graph as
    ``onnx/<file>`` artifacts of the version's run."""
    from mlflow import MlflowClient

    client = MlflowClient()
    tags = {**report.tags(), f"{PARITY_TAG_PREFIX}passed": str(passed).lower()}
    for key, value in tags.items():
        client.set_model_version_tag(model_name, version, key, value)
    model_version = client.get_model_version(model_name, version)
    card = with_parity(model_version.description or "", card_section(report, passed))
    client.update_model_version(model_name, version, description=card)
    if passed and exported is not None and model_version.run_id:
        logged = {item.path for item in client.list_artifacts(model_version.run_id, "onnx")}
        if f"onnx/{exported.name}" not in logged:
            client.log_artifact(model_version.run_id, str(exported), "onnx")
