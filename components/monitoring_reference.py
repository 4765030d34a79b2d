"""The champion's monitoring reference: what its traffic is compared with.

Written at evaluation (``monitoring_reference.parquet`` beside ``predictions.parquet``,
logged with them under ``evaluation/`` in MLflow): per test text, the label the model
predicted, its confidence and the same text features the server logs
(``components/text_features.py``), without the text. A version evaluated before this file
existed gets it rebuilt from its logged predictions and its registered model.
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from components.text_features import Featurizer, load_featurizer, text_features

REFERENCE_FILE = "monitoring_reference.parquet"


def reference_frame(
    featurizer: Featurizer,
    texts: Sequence[str],
    probabilities: np.ndarray,
    labels: Sequence[str],
) -> pd.DataFrame:
    """One row per text: ``label`` (predicted), ``confidence`` and the text features."""
    rows = text_features(featurizer, list(texts))
    frame = pd.DataFrame.from_records(rows)
    frame["label"] = [labels[index] for index in probabilities.argmax(axis=1)]
    frame["confidence"] = probabilities.max(axis=1).astype(float)
    return frame


def write_reference(
    model_dir: Path,
    texts: Sequence[str],
    probabilities: np.ndarray,
    labels: Sequence[str],
    output_dir: Path,
) -> dict[str, Path]:
    """Write the reference of a model's evaluation; returns ``{file name: path}``."""
    frame = reference_frame(load_featurizer(model_dir), texts, probabilities, labels)
    path = output_dir / REFERENCE_FILE
    frame.to_parquet(path, index=False)
    return {REFERENCE_FILE: path}


def rebuild_reference(model_name: str, version: str, predictions: pd.DataFrame) -> pd.DataFrame:
    """The reference of a version evaluated before references were written: its logged
    predictions (texts and probabilities) featurized with its registered model."""
    from components.mlflow_model import download_hf_model

    prob_columns = [column for column in predictions.columns if column.startswith("prob_")]
    labels = [column.removeprefix("prob_") for column in prob_columns]
    with tempfile.TemporaryDirectory(prefix="ratchet-reference-") as tmp:
        model_dir = download_hf_model(f"models:/{model_name}/{version}", Path(tmp))
        featurizer = load_featurizer(model_dir)
    return reference_frame(
        featurizer,
        predictions["text"].astype(str).tolist(),
        predictions[prob_columns].to_numpy(),
        labels,
    )
