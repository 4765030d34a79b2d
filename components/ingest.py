"""Ingest: read a labelled text data set into frames with the standard columns.

A source is a CSV, TSV, JSONL or Parquet file (format from the extension; one data set,
split by the prepare stage, whatever its name), a folder whose files are matched to
``train``/``validation``/``test`` by name (:mod:`components.data_files`), or
``hf:<dataset>[/<config>]`` (Hugging Face ``datasets``, needs the internet). Columns
``data.text_column`` and ``data.label_column`` become ``text`` and ``label``; labels are
kept as raw strings here and mapped to class ids by :func:`label_mapping`. Every row keeps
its file ``line`` so errors can point at it. Malformed files (bad UTF-8, ragged rows,
empty files) raise ``DataError`` naming the file and line; content problems are left to
the validate stage.

The ingest stage (``ratchet ingest``) copies the source byte-for-byte into ``data/raw/``
so DVC records its checksum (``dvc.lock``) and can push it to the remote.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import shutil
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from components.config import DataConfig
from components.data_files import (
    FORMATS,
    SPLIT_WORDS,
    TOKEN_FORMATS,
    data_format,
    locate_split_files,
)
from components.errors import ConfigError, DataError
from components.files import replace_folder
from components.state import ProjectPaths

logger = logging.getLogger(__name__)


def formats_for_task(task: str) -> Mapping[str, str]:
    """The file suffixes (and their formats) a source of ``data.task`` may hold."""
    return TOKEN_FORMATS if task == "token-classification" else FORMATS


HF_PREFIX = "hf:"
LINE_COLUMN = "line"


@dataclass(frozen=True)
class RawDataset:
    """A data set as read: one frame per raw split (``train``, ``dev``, ``test`` or ``all``).

    Each frame has ``text`` and ``label`` (raw label strings; either is absent when the
    source lacks the configured column), ``line`` (1-based line or row in its file) and
    the configured slice columns.
    """

    source: str
    splits: dict[str, pd.DataFrame]
    files: dict[str, str] = field(default_factory=dict)

    @property
    def row_counts(self) -> dict[str, int]:
        return {name: len(frame) for name, frame in self.splits.items()}


def read_dataset(source: str, data_cfg: DataConfig, project_root: Path) -> RawDataset:
    """Read a data set from a file, a folder of split files or ``hf:<name>``.

    Args:
        source: path (relative to ``project_root``) or ``hf:<dataset>[/<config>]``.
        data_cfg: column names, slice columns and the ``max_rows`` cap.
        project_root: the folder relative paths are resolved against.

    Returns:
        The raw splits with standard column names.

    Raises:
        DataError: the source is missing, has no data files, or a file is malformed.
    """
    if source.startswith(HF_PREFIX):
        return read_hf_dataset(source, data_cfg)
    path = Path(source).expanduser()
    path = path if path.is_absolute() else project_root / path
    files = locate_split_files(path)
    splits = {
        split: standardise_columns(read_table(file, data_cfg.max_rows), data_cfg, file)
        for split, file in files.items()
    }
    return RawDataset(source=source, splits=splits, files={k: str(v) for k, v in files.items()})


def read_table(path: Path, max_rows: int | None = None) -> pd.DataFrame:
    """Read one file with its original columns (text formats as strings) plus ``line``."""
    kind = data_format(path)
    if kind == "parquet":
        return read_parquet(path, max_rows)
    text = decode_utf8(path, path.read_bytes())
    if kind == "jsonl":
        return read_jsonl(path, text, max_rows)
    return read_delimited(path, text, "\t" if kind == "tsv" else ",", max_rows)


def decode_utf8(path: Path, content: bytes) -> str:
    """Decode strictly; a bad byte is reported with its line number."""
    if not content.strip():
        raise DataError(f"{path} is empty")
    try:
        return content.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        line = content[: error.start].count(b"\n") + 1
        bad = content[error.start : error.end]
        raise DataError(
            f"{path} line {line}: invalid UTF-8 bytes {bad!r}; re-save the file as UTF-8"
        ) from None


def read_delimited(path: Path, text: str, delimiter: str, max_rows: int | None) -> pd.DataFrame:
    """CSV (quoted fields allowed) or TSV (GLUE style, quotes are literal); ragged rows fail."""
    reader = csv.reader(
        io.StringIO(text, newline=""),
        delimiter=delimiter,
        quoting=csv.QUOTE_NONE if delimiter == "\t" else csv.QUOTE_MINIMAL,
    )
    try:
        header = next(reader)
        repeated = sorted({name for name in header if header.count(name) > 1})
        if repeated:
            raise DataError(f"{path} line 1: the header repeats column(s) {repeated}")
        rows: list[list[str]] = []
        lines: list[int] = []
        for row in reader:
            if not row:
                continue  # blank line
            if len(row) != len(header):
                raise DataError(
                    f"{path} line {reader.line_num}: {len(row)} fields where the header has "
                    f"{len(header)} (ragged row)"
                )
            rows.append(row)
            lines.append(reader.line_num)
            if max_rows is not None and len(rows) >= max_rows:
                break
    except csv.Error as error:
        raise DataError(f"{path} line {reader.line_num}: malformed {error}") from None
    if not rows:
        raise DataError(f"{path} has a header but no data rows")
    frame = pd.DataFrame(rows, columns=[name.strip() for name in header], dtype=object)
    frame[LINE_COLUMN] = lines
    return frame


def json_objects(path: Path, text: str) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, object) per non-blank line of a JSONL text.

    Raises:
        DataError: a line is not JSON or not an object; names the file and line.
    """
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            raise DataError(f"{path} line {number}: not valid JSON ({error.msg})") from None
        if not isinstance(record, dict):
            raise DataError(f"{path} line {number}: expected a JSON object per line")
        yield number, record


def read_jsonl(path: Path, text: str, max_rows: int | None) -> pd.DataFrame:
    records: list[dict[str, Any]] = []
    lines: list[int] = []
    for number, record in json_objects(path, text):
        records.append(record)
        lines.append(number)
        if max_rows is not None and len(records) >= max_rows:
            break
    if not records:
        raise DataError(f"{path} has no data rows")
    frame = pd.DataFrame.from_records(records).astype(object)
    frame[LINE_COLUMN] = lines
    return frame


def read_parquet(path: Path, max_rows: int | None) -> pd.DataFrame:
    try:
        frame = pd.read_parquet(path)
    except (OSError, ValueError) as error:
        raise DataError(f"{path} is not a readable Parquet file: {error}") from None
    if frame.empty:
        raise DataError(f"{path} has no data rows")
    frame = frame.head(max_rows) if max_rows else frame
    frame = frame.reset_index(drop=True).astype(object)
    frame[LINE_COLUMN] = range(1, len(frame) + 1)
    return frame


def standardise_columns(frame: pd.DataFrame, data_cfg: DataConfig, path: Path) -> pd.DataFrame:
    """Rename the configured columns to ``text``/``label`` and keep only what later stages use.

    A missing text or label column is left out (the validation suite reports it); a
    missing slice column is a configuration error.
    """
    missing_slices = [name for name in data_cfg.slice_columns if name not in frame.columns]
    if missing_slices:
        raise ConfigError(
            f"data.slice_columns {missing_slices} not in {path} (columns: {list(frame.columns)})"
        )
    standard = pd.DataFrame(index=frame.index)
    if data_cfg.text_column in frame.columns:
        standard["text"] = [text_or_none(value) for value in frame[data_cfg.text_column]]
    if data_cfg.label_column in frame.columns:
        standard["label"] = [label_text(value) for value in frame[data_cfg.label_column]]
    standard[LINE_COLUMN] = frame[LINE_COLUMN].astype("int64")
    for name in data_cfg.slice_columns:
        standard[name] = frame[name]
    standard.attrs["columns"] = [c for c in frame.columns if c != LINE_COLUMN]
    return standard.reset_index(drop=True)


def is_missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value)) or value is pd.NA


def text_or_none(value: Any) -> str | None:
    return None if is_missing(value) else str(value)


def label_text(value: Any) -> str | None:
    """Raw label as a string: ``1``, ``1.0`` and ``"1"`` all become ``"1"``."""
    if is_missing(value):
        return None
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if hasattr(value, "item"):  # numpy scalar
        return label_text(value.item())
    return str(value).strip()


def label_mapping(data_cfg: DataConfig, raw_labels: Iterable[str | None]) -> dict[str, int]:
    """Raw label string -> class id, from ``data.labels`` and ``data.label_aliases``.

    With ``data.labels`` set, integer labels index into it and names map to their position.
    With ``data.labels: null`` the classes are the sorted distinct raw values (numerically
    when all are integers), after aliases.

    Raises:
        ConfigError: an alias points at a class name not in ``data.labels``.
    """
    names = class_names(data_cfg, raw_labels)
    mapping = {str(index): index for index in range(len(names))} if data_cfg.labels else {}
    mapping.update({name: index for index, name in enumerate(names)})
    for alias, target in data_cfg.label_aliases.items():
        if target not in names:
            raise ConfigError(f"data.label_aliases maps {alias!r} to unknown class {target!r}")
        mapping[alias] = names.index(target)
    return mapping


def class_names(data_cfg: DataConfig, raw_labels: Iterable[str | None]) -> list[str]:
    """Class names in id order: ``data.labels``, or inferred from the raw values."""
    if data_cfg.labels is not None:
        return list(data_cfg.labels)
    aliases = data_cfg.label_aliases
    distinct = {aliases.get(value, value) for value in raw_labels if value is not None}
    if all(value.lstrip("-").isdigit() for value in distinct):
        return sorted(distinct, key=int)
    return sorted(distinct)


def load_hf_frames(source: str, max_rows: int | None = None) -> dict[str, pd.DataFrame]:
    """Load ``hf:<dataset>[/<config>]`` with Hugging Face ``datasets`` (online only).

    Returns:
        Raw split name -> frame with the data set's own columns; GLUE-style unlabelled
        test splits (all labels -1) are dropped.
    """
    try:
        import datasets  # optional, online-only dependency
    except ImportError:
        raise DataError(
            f"{source} needs the Hugging Face `datasets` package (pip install datasets) and "
            "internet access; or point data.source at a local file or folder"
        ) from None
    name, _, config = source[len(HF_PREFIX) :].partition("/")
    try:
        loaded = datasets.load_dataset(name, config or None)
    except Exception as error:  # datasets raises many unrelated types for network/name issues
        raise DataError(f"could not load {source}: {error}") from error
    frames = {}
    for split_name, split in loaded.items():
        frame = split.to_pandas()
        frame = frame.head(max_rows) if max_rows else frame
        if "label" in frame and (frame["label"] == -1).all():
            continue
        frames[SPLIT_WORDS.get(split_name, split_name)] = frame
    return frames


def read_hf_dataset(source: str, data_cfg: DataConfig) -> RawDataset:
    """Read ``hf:<dataset>[/<config>]`` into standard columns (see :func:`load_hf_frames`)."""
    splits = {}
    for split, frame in load_hf_frames(source, data_cfg.max_rows).items():
        frame = frame.astype(object)
        frame[LINE_COLUMN] = range(1, len(frame) + 1)
        splits[split] = standardise_columns(frame, data_cfg, Path(f"{source}[{split}]"))
    return RawDataset(source=source, splits=splits)


INCOMING_DIR_NAME = "incoming"  # data/incoming: a snapshot waiting for validation


def stage_snapshot(
    source: str, project_root: Path, raw_dir: Path, formats: Mapping[str, str] = FORMATS
) -> Path:
    """Copy the source's data files byte-for-byte into ``incoming/`` beside ``raw_dir``.

    ``hf:`` sources are written as one Parquet file per split instead. ``raw_dir`` itself
    is not touched: :func:`replace_folder` swaps the staged copy in once it is accepted. A
    rejected copy stays in ``incoming/``, where validation errors point, until the next
    snapshot replaces it.

    Returns:
        The staging folder.
    """
    staging = raw_dir.with_name(INCOMING_DIR_NAME)
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        if source.startswith(HF_PREFIX):
            for split, frame in load_hf_frames(source).items():
                frame.to_parquet(staging / f"{split}.parquet", index=False)
        else:
            path = Path(source).expanduser()
            path = path if path.is_absolute() else project_root / path
            for file in locate_split_files(path, formats).values():
                shutil.copyfile(file, staging / file.name)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return staging


def snapshot_source(
    source: str, project_root: Path, raw_dir: Path, formats: Mapping[str, str] = FORMATS
) -> list[Path]:
    """Snapshot the source into ``raw_dir`` (replaced whole).

    Returns:
        The files written, relative to ``raw_dir``.
    """
    replace_folder(stage_snapshot(source, project_root, raw_dir, formats), raw_dir)
    return sorted(p.relative_to(raw_dir) for p in raw_dir.iterdir())


def run_ingest(
    source: str, paths: ProjectPaths, formats: Mapping[str, str] = FORMATS
) -> list[Path]:
    """Snapshot ``source`` into ``data/raw`` (the DVC stage ``ingest``); ``formats`` are
    the file types the task reads (see :func:`locate_split_files`)."""
    files = snapshot_source(source, paths.model_root, paths.raw_dir, formats)
    logger.info("snapshot of %s in %s: %s", source, paths.raw_dir, [str(f) for f in files])
    return files
