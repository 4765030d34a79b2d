"""The texts masked-language-model pretraining reads: the training split plus corpora.

``pretrain.extra_corpora`` are .txt files (a text per line), .tsv files with a ``text`` or
``sentence`` column, or folders of them. Corpus texts that repeat a validation or test
text are left out, so pretraining never sees what the model is selected and scored on.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from components.config import RatchetConfig
from components.errors import DataError, TrainingError
from components.fingerprints import path_fingerprint
from components.state import ProjectPaths
from components.token_prepare import load_task_data
from components.validate import normalise_text

logger = logging.getLogger(__name__)

CORPUS_SUFFIXES = (".txt", ".tsv")
TEXT_COLUMNS = ("text", "sentence")


def read_corpus(path: Path) -> list[str]:
    """Texts from a .txt file (one per non-empty line), a .tsv with a ``text`` or
    ``sentence`` column, or a folder of such files (read in name order)."""
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix in CORPUS_SUFFIXES)
        if not files:
            raise DataError(f"pretrain.extra_corpora: {path} holds no .txt or .tsv file")
        return [text for file in files for text in read_corpus(file)]
    if not path.is_file():
        raise DataError(f"pretrain.extra_corpora: {path} does not exist")
    if path.suffix == ".tsv":
        frame = pd.read_csv(path, sep="\t", quoting=3, dtype=str, keep_default_na=False)
        column = next((c for c in TEXT_COLUMNS if c in frame.columns), None)
        if column is None:
            raise DataError(f"{path} has no 'text' or 'sentence' column: {list(frame.columns)}")
        return [t.strip() for t in frame[column] if t.strip()]
    lines = path.read_text(encoding="utf-8").splitlines()
    return [line.strip() for line in lines if line.strip()]


def split_texts(
    texts: Sequence[str], eval_count: int, max_texts: int | None, seed: int
) -> tuple[list[str], list[str]]:
    """Shuffle with ``seed``, cap at ``max_texts``, hold out up to ``eval_count`` (at most
    a fifth) for perplexity."""
    shuffled = list(texts)
    random.Random(seed).shuffle(shuffled)
    if max_texts is not None:
        shuffled = shuffled[:max_texts]
    if len(shuffled) < 2:
        raise TrainingError(f"pretraining needs at least 2 texts, got {len(shuffled)}")
    held_out = max(1, min(eval_count, len(shuffled) // 5))
    return shuffled[held_out:], shuffled[:held_out]


def chunk_token_ids(ids_per_text: Sequence[Sequence[int]], window: int) -> list[list[int]]:
    """Cut each text's tokens into windows of at most ``window`` tokens (long reviews
    become several training sequences instead of being truncated)."""
    return [
        list(ids[start : start + window])
        for ids in ids_per_text
        for start in range(0, len(ids), window)
        if ids
    ]


def token_windows(tokenizer: Any, texts: list[str], window: int) -> list[list[int]]:
    """The texts' token ids (no special tokens) cut into windows of ``window`` tokens."""
    ids = tokenizer(texts, add_special_tokens=False, verbose=False)["input_ids"]
    return chunk_token_ids(ids, window)


def corpora_fingerprint(config: RatchetConfig, paths: ProjectPaths) -> str:
    """Content fingerprint of ``pretrain.extra_corpora`` (every file's bytes, in order);
    a corpus edited in place changes it, a corpus moved elsewhere does not.

    Raises:
        DataError: a corpus does not exist.
    """
    fingerprints = []
    for corpus in config.pretrain.extra_corpora:
        path = paths.resolve_data(corpus)
        if not path.exists():
            raise DataError(f"pretrain.extra_corpora: {path} does not exist")
        fingerprints.append(path_fingerprint(path))
    return "+".join(fingerprints)


@dataclass(frozen=True)
class PretrainingCorpus:
    """The texts pretraining reads, and how many corpus texts were left out as held out.

    Attributes:
        texts: the training split's texts, then the extra corpora's.
        held_out_dropped: corpus texts equal (after ``normalise_text``) to a validation or
            test text, left out so that masked-LM training never sees the texts the
            model is selected and scored on.
    """

    texts: list[str]
    held_out_dropped: int = 0

    @property
    def metrics(self) -> dict[str, float]:
        return {"corpus_held_out_dropped": float(self.held_out_dropped)}


def drop_held_out_texts(texts: Sequence[str], held_out: Sequence[str]) -> tuple[list[str], int]:
    """``texts`` without those equal to a ``held_out`` text after ``normalise_text``
    (case, Unicode form and whitespace do not hide a copy); returns (kept, dropped)."""
    held_out_keys = {normalise_text(text) for text in held_out}
    kept = [text for text in texts if normalise_text(text) not in held_out_keys]
    return kept, len(texts) - len(kept)


def gather_pretraining_texts(config: RatchetConfig, paths: ProjectPaths) -> PretrainingCorpus:
    """The prepared training split's texts followed by every ``pretrain.extra_corpora``,
    less the corpus texts that repeat a validation or test text (counted and logged)."""
    prepared = load_task_data(config.data.task, paths.prepared_dir)
    texts = prepared.train["text"].tolist()
    held_out = [*prepared.validation["text"], *prepared.test["text"]]
    dropped = 0
    for corpus in config.pretrain.extra_corpora:
        extra, repeats = drop_held_out_texts(read_corpus(paths.resolve_data(corpus)), held_out)
        logger.info("extra corpus %s: %d texts", corpus, len(extra))
        if repeats:
            logger.warning(
                "extra corpus %s: left out %d texts that repeat a validation or test "
                "text (pretraining on them would leak the held-out splits)",
                corpus,
                repeats,
            )
        texts.extend(extra)
        dropped += repeats
    return PretrainingCorpus(texts, dropped)
