"""The exported feedback data set as prepare reads it (``data/feedback``, written by
``ratchet feedback export``, see ``components/feedback.py``): its rows go to the train
split only, never where they would leak into validation or test.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from components.config import DataConfig
from components.ingest import label_mapping
from components.text_features import FEEDBACK_FILE_NAME
from components.validate import normalise_text

FEEDBACK_DATASET = "data/feedback"


def drop_leaking(feedback: pd.DataFrame, held_out: set[str]) -> pd.DataFrame:
    """Feedback rows whose text is not a validation or test text."""
    leaking = feedback["text"].map(normalise_text).isin(held_out)
    return feedback[~leaking].reset_index(drop=True)


def read_feedback_dataset(project_root: Path) -> pd.DataFrame | None:
    """The exported feedback data set, or None when there is none."""
    path = project_root / FEEDBACK_DATASET / FEEDBACK_FILE_NAME
    if not path.is_file():
        return None
    return pd.read_json(path, orient="records", lines=True, dtype={"text": str, "label": str})


def add_feedback(
    train: pd.DataFrame,
    held_out: list[pd.DataFrame],
    feedback: pd.DataFrame | None,
    data_cfg: DataConfig,
    labels: list[str],
) -> tuple[pd.DataFrame, int]:
    """The train split with the feedback rows added (prepared columns), and their count.

    Feedback that equals a validation or test text is dropped (never trained on), as
    is a row whose label is not a class; a text already in train takes the feedback's label.
    """
    if feedback is None or feedback.empty:
        return train, 0
    mapping = label_mapping(data_cfg, feedback["label"].tolist())
    held = {normalise_text(text) for frame in held_out for text in frame["text"]}
    known = feedback[feedback["label"].isin(mapping.keys())]
    kept = drop_leaking(known, held)
    ids = kept["label"].map(mapping).astype("int64")
    rows = pd.DataFrame(
        {"text": kept["text"].str.strip(), "label": ids, "label_name": ids.map(labels.__getitem__)}
    )
    corrected = train["text"].map(normalise_text).isin(set(rows["text"].map(normalise_text)))
    merged = pd.concat([train[~corrected], rows], ignore_index=True)
    return merged, len(rows)


def feedback_lineage(project_root: Path) -> dict[str, Any]:
    """``feedback_rows`` trained on (from the prepared manifest) and, when the data set
    exists, ``feedback_data_md5``: the lineage shows what feedback a version learnt from."""
    import json

    from components.versioning import workspace_md5

    manifest = project_root / "data" / "prepared" / "manifest.json"
    rows = 0
    if manifest.is_file():
        rows = int(json.loads(manifest.read_text(encoding="utf-8")).get("feedback_rows", 0))
    lineage: dict[str, Any] = {"feedback_rows": rows}
    md5 = workspace_md5(project_root / FEEDBACK_DATASET)
    if md5 is not None:
        lineage["feedback_data_md5"] = md5
    return lineage
