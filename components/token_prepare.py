"""Prepare validated token-classification data into the frozen train/validation/test splits.

    ratchet prepare           # with data.task: token-classification

Output: ``data/prepared/{train,validation,test}.jsonl`` (one sentence per line: ``tokens``,
``tags`` and ``tag_ids``) and ``manifest.json`` (``task``, the tag set in id order as
``labels``, and per split the sentence and token counts, entities per type and the file's
DVC md5). The split rules are the classification ones (:func:`components.prepare.split_frames`):
a data set's own train/valid/test files are kept, missing ones are carved from train by a
salted hash of the sentence text; exact duplicate sentences within train and validation
are dropped (the test split is kept whole, comparable with published scores on it).
:func:`load_prepared_tokens` reads them back as :class:`components.prepare.PreparedData`
frames with ``tokens``, ``tags``, ``tag_ids`` and ``text``.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from pathlib import Path
from typing import Any

import pandas as pd

from components.config import DataConfig
from components.errors import DataError
from components.files import atomic_dir
from components.ingest import RawDataset
from components.prepare import (
    MANIFEST_FILE,
    SPLIT_NAMES,
    PreparedData,
    load_prepared,
    split_frames,
)
from components.state import ProjectPaths
from components.token_data import entity_types, read_token_dataset, tag_names
from components.token_validate import load_tokenizer, validate_token_dataset
from components.validate import normalise_text
from components.versioning import file_md5

logger = logging.getLogger(__name__)

TASK = "token-classification"
PREPARED_COLUMNS = ("tokens", "tags", "tag_ids")


def encode_tags(frame: pd.DataFrame, tags: list[str], deduplicate: bool = True) -> pd.DataFrame:
    """Prepared columns: ``tokens``, ``tags``, ``tag_ids`` (ids into ``tags``), ``text``;
    with ``deduplicate``, exact duplicate sentences (same text and tags) after the first
    are dropped.

    Raises:
        DataError: a sentence has a tag outside ``tags`` or unequal lengths (validate first).
    """
    index = {tag: position for position, tag in enumerate(tags)}
    for tokens, sentence_tags in zip(frame["tokens"], frame["tags"], strict=True):
        unknown = sorted(set(sentence_tags) - set(index))
        if unknown or len(tokens) != len(sentence_tags) or not tokens:
            raise DataError(
                f"cannot prepare the sentence {' '.join(tokens)[:60]!r}: unknown tags "
                f"{unknown}, or not one tag per token (run `ratchet validate` first)"
            )
    prepared = pd.DataFrame(
        {
            "tokens": frame["tokens"].map(list),
            "tags": frame["tags"].map(list),
            "tag_ids": frame["tags"].map(lambda g: [index[tag] for tag in g]),
            "text": frame["text"],
        }
    )
    if not deduplicate:
        return prepared
    keys = prepared["text"].map(normalise_text) + "\x00" + prepared["tags"].map(" ".join)
    return prepared[~keys.duplicated(keep="first")].reset_index(drop=True)


def prepare_token_splits(raw: RawDataset, data_cfg: DataConfig) -> PreparedData:
    """Turn validated sentences into the prepared splits (pure; nothing is written).

    Raises:
        DataError: a split would be empty, or a sentence cannot be encoded.
    """
    tags = tag_names(data_cfg, [g for split in raw.splits.values() for g in split["tags"]])
    frames = {}
    for name, frame in split_frames(raw, data_cfg).items():
        # The test split is kept whole, so its entity F1 compares with published scores
        # on the same file (CoNLL-2003's test repeats short lines such as "-" and scores).
        frames[name] = encode_tags(frame, tags, deduplicate=name != "test")
        if frames[name].empty:
            raise DataError(f"the {name} split is empty: {raw.source} has too few sentences")
    return PreparedData(labels=tags, **frames)


def token_split_stats(frame: pd.DataFrame, tags: list[str]) -> dict[str, Any]:
    """Sentences, tokens, entities per type and sentence length stats of one split."""
    lengths = frame["tokens"].map(len)
    entities = Counter(tag[2:] for g in frame["tags"] for tag in g if tag.startswith("B-"))
    return {
        "rows": len(frame),
        "tokens": int(lengths.sum()),
        "entity_counts": {kind: int(entities.get(kind, 0)) for kind in entity_types(tags)},
        "length_tokens": {"mean": round(float(lengths.mean()), 2), "max": int(lengths.max())},
    }


def write_prepared_tokens(
    prepared: PreparedData, out_dir: Path, source: str = ""
) -> dict[str, Any]:
    """Write the splits as JSONL and the manifest; replace ``out_dir`` atomically.

    Returns:
        The manifest: task, labels (the tag set), source, per split stats and ``md5``.
    """
    manifest: dict[str, Any] = {
        "task": TASK,
        "labels": prepared.labels,
        "source": source,
        "splits": {},
    }
    with atomic_dir(out_dir) as staging:
        for name in SPLIT_NAMES:
            frame = prepared.split(name)
            path = staging / f"{name}.jsonl"
            lines = (
                json.dumps(dict(zip(PREPARED_COLUMNS, values, strict=True)), ensure_ascii=False)
                for values in zip(*(frame[column] for column in PREPARED_COLUMNS), strict=True)
            )
            path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
            manifest["splits"][name] = {
                **token_split_stats(frame, prepared.labels),
                "md5": file_md5(path),
            }
        (staging / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2) + "\n", "utf-8")
    return manifest


def load_prepared_tokens(prepared_dir: Path) -> PreparedData:
    """Read the splits written by :func:`write_prepared_tokens`.

    Raises:
        DataError: the folder holds no prepared token data (run ``ratchet prepare``).
    """
    manifest_path = prepared_dir / MANIFEST_FILE
    manifest = (
        json.loads(manifest_path.read_text(encoding="utf-8")) if manifest_path.is_file() else {}
    )
    if manifest.get("task") != TASK:
        raise DataError(
            f"no prepared token-classification data at {prepared_dir}: run `ratchet prepare` "
            "with data.task: token-classification"
        )
    frames = {}
    for name in SPLIT_NAMES:
        path = prepared_dir / f"{name}.jsonl"
        if not path.is_file():
            raise DataError(f"prepared split missing: {path}")
        frame = pd.read_json(path, lines=True, dtype=False)
        frame["text"] = frame["tokens"].map(" ".join)
        frames[name] = frame
    return PreparedData(labels=list(manifest["labels"]), **frames)


def load_task_data(task: str, prepared_dir: Path) -> PreparedData:
    """The prepared splits of ``data.task``: token sentences or classification rows."""
    if task == TASK:
        return load_prepared_tokens(prepared_dir)
    return load_prepared(prepared_dir)


def run_token_prepare(
    source: str, config: Any, paths: ProjectPaths, validate: bool = True
) -> dict[str, Any]:
    """Read ``source`` as token data, validate it (unless told not to), write
    ``data/prepared``; a failure leaves the folder as it was.

    Raises:
        DataError / DataValidationError: unreadable or invalid data.
    """
    raw = read_token_dataset(source, config.data, paths.model_root)
    if validate:
        tokenizer = load_tokenizer(config.model.base, paths.project_root)
        validate_token_dataset(
            raw, config.data, paths.data_docs_dir, tokenizer, config.model.max_length
        )
    prepared = prepare_token_splits(raw, config.data)
    manifest = write_prepared_tokens(prepared, paths.prepared_dir, source)
    rows = {name: split["rows"] for name, split in manifest["splits"].items()}
    logger.info("prepared %s into %s: %s", source, paths.prepared_dir, rows)
    return manifest
