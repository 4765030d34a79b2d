"""Feedback: labels sent to the server's ``POST /feedback``, turned into a data set.

    ratchet feedback export

The server appends each label to ``feedback/feedback.jsonl`` in the state folder. Export
reads it (the last label of a text wins), drops texts that equal a validation or test
text of the source (leakage), validates the source's training data with the feedback
added using the same Great Expectations suite as ``ratchet validate``, then writes
``data/feedback/feedback.jsonl`` and records it with ``dvc add`` (its own DVC data set
beside ``data/raw``, which re-ingesting never touches). Prepare adds these rows to the
train split only (:func:`add_feedback`), dropping again any that equal a validation or
test text; the manifest and the version's lineage record how many were used.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from components.config import DataConfig, RatchetConfig
from components.errors import DataError
from components.feedback_data import FEEDBACK_DATASET, drop_leaking
from components.files import atomic_dir
from components.ingest import LINE_COLUMN, RawDataset, read_dataset
from components.prepare import split_frames
from components.state import ProjectPaths
from components.text_features import FEEDBACK_DIR_NAME, FEEDBACK_FILE_NAME
from components.validate import normalise_text, validate_dataset

logger = logging.getLogger(__name__)

HELD_OUT_SPLITS = ("validation", "test")


@dataclass(frozen=True)
class FeedbackExport:
    rows: int
    dropped_leaking: int
    md5: str | None
    path: Path


def store_path(paths: ProjectPaths) -> Path:
    """The server's feedback store in the state folder."""
    return paths.model_state_dir / FEEDBACK_DIR_NAME / FEEDBACK_FILE_NAME


def dataset_path(paths: ProjectPaths) -> Path:
    return paths.model_root / FEEDBACK_DATASET / FEEDBACK_FILE_NAME


def read_store(path: Path) -> pd.DataFrame:
    """Feedback records (``text``, ``label``), the last label of each text kept; a line
    cut short by a killed server is skipped."""
    records = []
    if path.is_file():
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            records.append({"text": str(record["text"]), "label": str(record["label"])})
    frame = pd.DataFrame(records, columns=["text", "label"])
    keys = frame["text"].map(normalise_text)
    return frame[~keys.duplicated(keep="last")].reset_index(drop=True)


def held_out_texts(raw: RawDataset, data_cfg: DataConfig) -> set[str]:
    """Normalised texts of the validation and test splits prepare makes from ``raw``."""
    frames = split_frames(raw, data_cfg)
    return {normalise_text(text) for name in HELD_OUT_SPLITS for text in frames[name]["text"]}


def with_feedback(raw: RawDataset, feedback: pd.DataFrame) -> RawDataset:
    """``raw`` with the feedback rows appended to its training split (for validation)."""
    pool = "all" if "all" in raw.splits else "train"
    rows = feedback.assign(**{LINE_COLUMN: range(1, len(feedback) + 1)})
    splits = dict(raw.splits)
    splits[pool] = pd.concat([raw.splits[pool], rows], ignore_index=True)
    return RawDataset(source=f"{raw.source} + {FEEDBACK_DATASET}", splits=splits)


def source_dataset(config: RatchetConfig, paths: ProjectPaths) -> RawDataset:
    """The training data feedback is added to: the ``data/raw`` snapshot, else the source."""
    source = str(paths.raw_dir) if paths.raw_dir.is_dir() else config.data.source
    return read_dataset(source, config.data, paths.model_root)


def export_feedback(config: RatchetConfig, paths: ProjectPaths) -> FeedbackExport:
    """Validate the collected feedback and store it as the DVC-tracked ``data/feedback``.

    Raises:
        DataError: no feedback was collected, or every text leaks into validation/test.
        DataValidationError: the training data with the feedback fails the data suite;
            ``data/feedback`` is left as it was.
    """
    from components import versioning

    store = store_path(paths)
    feedback = read_store(store)
    if feedback.empty:
        raise DataError(f"no feedback collected in {store} (POST /feedback to the server)")
    raw = source_dataset(config, paths)
    kept = drop_leaking(feedback, held_out_texts(raw, config.data))
    dropped = len(feedback) - len(kept)
    if kept.empty:
        raise DataError(
            f"all {dropped} feedback texts equal validation or test texts of {raw.source}: "
            "nothing can be added to training without leaking"
        )
    validate_dataset(with_feedback(raw, kept), config.data, paths.data_docs_dir)
    target = dataset_path(paths)
    with atomic_dir(target.parent) as staging:
        kept.to_json(staging / target.name, orient="records", lines=True, force_ascii=False)
    versioning.ensure_dvc_repo(paths.model_root)
    versioning.run_dvc(paths.model_root, "add", "--quiet", FEEDBACK_DATASET)
    md5 = versioning.locked_md5(paths.model_root, FEEDBACK_DATASET)
    logger.info("exported %d feedback rows (%d leaking dropped) to %s", len(kept), dropped, target)
    return FeedbackExport(rows=len(kept), dropped_leaking=dropped, md5=md5, path=target)
