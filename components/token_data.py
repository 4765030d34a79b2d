"""Token-classification data: CoNLL-style files and JSONL rows of ``tokens``/``tags`` lists.

A CoNLL file holds one token per line with its tag in the last column (any columns in
between, such as part-of-speech, are ignored), a blank line between sentences, and
``-DOCSTART-`` lines between documents (skipped). A JSONL file holds one sentence per line:
``{"tokens": [...], "tags": [...]}``. Either way a sentence becomes one row with
``tokens`` and ``tags`` lists, ``text`` (the tokens joined by spaces: the key for splits,
duplicates and pretraining), and ``line`` (where it starts in its file).

Malformed files (bad UTF-8, ragged columns, a tag without a token, JSON that is not a
sentence object) raise :class:`DataError` naming the file and line; content problems
(unequal lengths, unknown tags, invalid IOB2) are left to the validate stage
(:mod:`components.token_validate`). With ``data.repair_iob1`` an IOB1 sequence is
converted to IOB2 as it is read.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from components.config import DataConfig
from components.errors import DataError
from components.ingest import (
    HF_PREFIX,
    LINE_COLUMN,
    TOKEN_FORMATS,
    RawDataset,
    data_format,
    decode_utf8,
    json_objects,
    locate_split_files,
)

DOCSTART = "-DOCSTART-"
OUTSIDE = "O"


def read_token_dataset(source: str, data_cfg: DataConfig, project_root: Path) -> RawDataset:
    """Read a token-classification data set from a file or a folder of split files.

    Args:
        source: a CoNLL/JSONL file (split ``all``) or a folder with ``train``/``valid``/
            ``test`` files, relative to ``project_root``.
        data_cfg: ``max_rows`` (sentences per file) and ``repair_iob1``.
        project_root: the folder relative paths are resolved against.

    Returns:
        One frame per raw split, a row per sentence (``tokens``, ``tags``, ``text``, ``line``).

    Raises:
        DataError: the source is missing or ``hf:``, or a file is malformed.
    """
    if source.startswith(HF_PREFIX):
        raise DataError(
            f"{source}: token classification reads local CoNLL or JSONL files only; "
            "export the data set to files and point data.source at them"
        )
    path = Path(source).expanduser()
    path = path if path.is_absolute() else project_root / path
    files = locate_split_files(path, TOKEN_FORMATS)
    splits = {
        split: read_token_file(file, data_cfg.max_rows, data_cfg.repair_iob1)
        for split, file in files.items()
    }
    return RawDataset(source=source, splits=splits, files={k: str(v) for k, v in files.items()})


def read_token_file(path: Path, max_rows: int | None = None, repair: bool = False) -> pd.DataFrame:
    """One CoNLL or JSONL file as a frame of sentences (see the module header)."""
    kind = data_format(path, TOKEN_FORMATS)
    text = decode_utf8(path, path.read_bytes())
    sentences = read_conll(path, text) if kind == "conll" else read_token_jsonl(path, text)
    rows = []
    for line, tokens, tags in sentences:
        rows.append((line, tokens, iob1_to_iob2(tags) if repair else tags))
        if max_rows is not None and len(rows) >= max_rows:
            break
    if not rows:
        raise DataError(f"{path} has no sentences")
    frame = pd.DataFrame(rows, columns=[LINE_COLUMN, "tokens", "tags"])
    frame["text"] = [" ".join(tokens) for tokens in frame["tokens"]]
    frame.attrs["columns"] = ["tokens", "tags"]
    return frame[["tokens", "tags", "text", LINE_COLUMN]]


Sentence = tuple[int, list[str], list[str]]


def read_conll(path: Path, text: str) -> Iterable[Sentence]:
    """Sentences of a CoNLL file as (first line, tokens, tags).

    Raises:
        DataError: a line whose column count differs from the file's first token line
            (ragged), a line with one column, or one that starts with whitespace (a tag
            without a token); the message names the file and line.
    """
    columns: int | None = None
    start, tokens, tags = 0, list[str](), list[str]()
    for number, line in enumerate(text.splitlines(), start=1):
        fields = line.split()
        if not fields or fields[0] == DOCSTART:
            if tokens:
                yield start, tokens, tags
            start, tokens, tags = 0, list[str](), list[str]()
            continue
        if line[0].isspace():
            raise DataError(
                f"{path} line {number}: a tag without a token ({line.strip()!r} is indented); "
                "each line needs the token in the first column and its tag in the last"
            )
        if len(fields) < 2:
            raise DataError(
                f"{path} line {number}: one column ({fields[0]!r}); each line needs the "
                "token in the first column and its tag in the last"
            )
        columns = columns or len(fields)
        if len(fields) != columns:
            raise DataError(
                f"{path} line {number}: {len(fields)} columns where the file's lines have "
                f"{columns} (ragged columns)"
            )
        start = start or number
        tokens.append(fields[0])
        tags.append(fields[-1])
    if tokens:
        yield start, tokens, tags


def read_token_jsonl(path: Path, text: str) -> Iterable[Sentence]:
    """Sentences of a JSONL file of ``{"tokens": [...], "tags": [...]}`` objects.

    Raises:
        DataError: a line that is not JSON, not an object, or lacks a list of strings
            under ``tokens`` or ``tags``; the message names the file and line.
    """
    for number, record in json_objects(path, text):
        tokens = string_list(record, "tokens", path, number)
        yield number, tokens, string_list(record, "tags", path, number)


def string_list(record: dict[str, Any], key: str, path: Path, number: int) -> list[str]:
    if key not in record:
        raise DataError(
            f"{path} line {number}: no {key!r} list (keys: {sorted(record)}); data.task "
            "token-classification reads JSONL rows of tokens/tags lists: for rows of a text "
            "and a label, set data.task: text-classification"
        )
    value = record[key]
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise DataError(
            f"{path} line {number}: {key!r} must be a list of strings, got {value!r:.60}"
        )
    return value


def iob1_to_iob2(tags: Sequence[str]) -> list[str]:
    """IOB1 -> IOB2: an ``I-X`` that opens an entity (after ``O`` or another type)
    becomes ``B-X``; valid IOB2 is returned unchanged."""
    repaired = []
    previous = OUTSIDE
    for tag in tags:
        if tag.startswith("I-") and previous[2:] != tag[2:]:
            tag = "B-" + tag[2:]
        repaired.append(tag)
        previous = tag
    return repaired


def iob2_problem(tags: Sequence[str]) -> str:
    """Why ``tags`` is not valid IOB2 ("" when it is): the first ``I-X`` that does not
    continue a ``B-X``/``I-X``, by its token position."""
    previous = OUTSIDE
    for position, tag in enumerate(tags):
        if tag.startswith("I-") and previous[2:] != tag[2:]:
            return f"token {position + 1}: {tag} follows {previous}"
        previous = tag
    return ""


def entity_types(tags: Iterable[str]) -> list[str]:
    """Sorted entity types of a tag set (``B-PER``/``I-PER`` -> ``PER``)."""
    return sorted({tag[2:] for tag in tags if tag[:2] in ("B-", "I-")})


def infer_tag_set(tag_lists: Iterable[Sequence[str]]) -> list[str]:
    """The tag set in id order: ``O`` first, then ``B-``/``I-`` of each type, types sorted."""
    seen = {tag for tags in tag_lists for tag in tags}
    return [OUTSIDE] + [f"{prefix}-{kind}" for kind in entity_types(seen) for prefix in "BI"]


def tag_names(data_cfg: DataConfig, tag_lists: Iterable[Sequence[str]]) -> list[str]:
    """The tags in id order: ``data.labels``, or inferred from the data."""
    if data_cfg.labels is not None:
        return list(data_cfg.labels)
    return infer_tag_set(tag_lists)
