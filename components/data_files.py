"""Which files of a ``data.source`` hold which split: what a data path means.

A single file is one data set, whatever its name (``ag_news/test.csv`` as much as
``reviews.csv``): the prepare stage splits it by ``data.split``. A folder with one data
file reads the same way, so the ``data/raw`` snapshot of a single file means what the file
did. A folder with more files is matched to splits by the words of each file name
(``train``/``training``, ``validation``/``valid``/``val``/``dev``, ``test``), so
``train.csv``, ``sst2_train.tsv`` and ``train-00000-of-00001.parquet`` all hold the train
split. A folder that cannot be read one way only (two files for one split, a data file whose
name names no split, no train file) is an error that says what to rename, or to point
``data.source`` at one file.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path

from components.errors import DataError

FORMATS = {
    ".csv": "csv",
    ".tsv": "tsv",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".parquet": "parquet",
}
# What data.task token-classification reads: CoNLL-style text and JSONL token/tag lists.
TOKEN_FORMATS = {".txt": "conll", ".conll": "conll", ".jsonl": "jsonl", ".ndjson": "jsonl"}

# Words of a file name (or a Hugging Face split name), mapped to the raw split they hold.
SPLIT_WORDS = {
    "train": "train",
    "training": "train",
    "dev": "dev",
    "development": "dev",
    "validation": "dev",
    "valid": "dev",
    "val": "dev",
    "test": "test",
    "testing": "test",
}
WHOLE = "all"  # the raw split of a data set that is split by data.split
SPLIT_EXAMPLE = {"train": "train", "dev": "validation", "test": "test"}


def data_format(path: Path, formats: Mapping[str, str] = FORMATS) -> str:
    """The format of ``path`` from its suffix.

    Raises:
        DataError: a suffix the task does not read.
    """
    try:
        return formats[path.suffix.lower()]
    except KeyError:
        raise DataError(
            f"{path}: unsupported file type {path.suffix!r} (use {', '.join(formats)})"
        ) from None


def splits_named(name: str) -> set[str]:
    """The raw splits the words of a file stem or split name name (``sst2_train`` ->
    ``{"train"}``; ``train_test`` names two; ``reviews`` none)."""
    words = re.split(r"[^a-z0-9]+", name.lower())
    return {SPLIT_WORDS[word] for word in words if word in SPLIT_WORDS}


def split_of_name(name: str) -> str | None:
    """The one raw split a file stem or split name names, else None."""
    named = splits_named(name)
    return named.pop() if len(named) == 1 else None


def whole_file_split(path: Path) -> str:
    """The raw split of a file read as the whole data set: ``train`` when its name says
    so (the prepare stage carves validation and test from it either way), else ``all``."""
    return "train" if split_of_name(path.stem) == "train" else WHOLE


def locate_split_files(path: Path, formats: Mapping[str, str] = FORMATS) -> dict[str, Path]:
    """Map raw split names (``train``, ``dev``, ``test``, ``all``) to files.

    Args:
        path: a data file or a folder of data files.
        formats: file suffix -> format of the files the task reads (default: tables;
            :data:`TOKEN_FORMATS` for token classification).

    Raises:
        DataError: the source is missing, holds no data files, or its files cannot be
            matched to splits one way only; the message says what to rename.
    """
    if path.is_file():
        data_format(path, formats)
        return {whole_file_split(path): path}
    if not path.is_dir():
        raise DataError(f"data source not found: {path}")
    files = sorted(p for p in path.iterdir() if p.is_file() and not p.name.startswith("."))
    candidates = [p for p in files if p.suffix.lower() in formats]
    if not candidates:
        message = no_data_files_message(path, files, formats)
        folders = sorted(p.name for p in path.iterdir() if p.is_dir() and p.name[0] != ".")
        if folders:
            message += (
                f"; subfolders {folders} are not read: point data.source at the folder (or "
                "file) that holds the data"
            )
        raise DataError(message)
    if len(candidates) == 1:
        return {whole_file_split(candidates[0]): candidates[0]}
    return match_split_files(path, candidates)


def match_split_files(folder: Path, candidates: list[Path]) -> dict[str, Path]:
    """Match several data files to splits by name; anything ambiguous is a DataError."""
    found: dict[str, Path] = {}
    unnamed: list[Path] = []
    for candidate in candidates:
        split = split_of_name(candidate.stem)
        if split is None:
            unnamed.append(candidate)
        elif split in found:
            raise DataError(
                f"{folder}: {found[split].name} and {candidate.name} both look like the "
                f"{SPLIT_EXAMPLE[split]} split: keep one (merge shards into one file, or move "
                "the other out of the folder), or point data.source at one file to split it"
            )
        else:
            found[split] = candidate
    if unnamed:
        raise DataError(unnamed_files_message(folder, unnamed, found))
    if "train" not in found:
        named = ", ".join(f"{file.name} ({SPLIT_EXAMPLE[s]})" for s, file in sorted(found.items()))
        raise DataError(
            f"{folder} has {named} but no train file: rename the training data to "
            f"train{candidates[0].suffix}, or point data.source at one file to split it into "
            "train/validation/test (data.split)"
        )
    return found


def unnamed_files_message(folder: Path, unnamed: list[Path], found: Mapping[str, Path]) -> str:
    """Why files whose names name no split (or two) stop the read, and the fix."""
    names = ", ".join(file.name for file in unnamed)
    first = unnamed[0]
    if found:
        missing = [s for s in ("train", "test", "dev") if s not in found]
        target = SPLIT_EXAMPLE[missing[0]] if missing else "train"
        fix = (
            f"rename {first.name} to {target}{first.suffix} if it holds that split, or move it "
            "out of the folder"
        )
    else:
        fix = f"rename them to train{first.suffix}, validation{first.suffix} and test{first.suffix}"
    return (
        f"{folder}: cannot tell which split {names} hold(s): a file name must contain one of "
        f"train, validation (valid, val, dev) or test, as in train{first.suffix} or "
        f"sst2_train{first.suffix}; {fix}, or point data.source at one file to split it"
    )


def no_data_files_message(folder: Path, files: list[Path], formats: Mapping[str, str]) -> str:
    """Why a folder holds nothing to read; names the data.task its files would suit."""
    names = [file.name for file in files] or "none"
    message = f"{folder} holds no data files of the types {', '.join(formats)}; files: {names}"
    suffixes = {file.suffix.lower() for file in files}
    if formats is not TOKEN_FORMATS and suffixes & {".txt", ".conll"}:
        message += (
            "; .txt/.conll files are CoNLL token/tag data: set data.task: token-classification"
        )
    elif formats is TOKEN_FORMATS and suffixes & {".csv", ".tsv", ".parquet"}:
        message += (
            "; data.task token-classification reads CoNLL (.txt/.conll) or JSONL token/tag "
            "files: for a table of texts and labels set data.task: text-classification"
        )
    return message
