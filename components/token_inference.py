"""The one way Ratchet tags raw text with a token classifier: words, sub-tokens, entities.

The Bento of a token classifier (``serving/token_service.py``) and its release check
(``serving/release.py``) call :func:`load_tagger` and :func:`predict_entities`; nothing here
knows about HTTP or BentoML.

1. **Words.** Raw text is split into words with character offsets (:func:`split_words`) the
   way CoNLL-2003 tokens were made, since a tagger only knows the words it was trained on:
   runs of letters and digits (hyphenated compounds such as ``Anglo-Dutch`` and names such
   as ``O'Neill`` stay whole), abbreviations (``U.S.``), numbers with separators
   (``1,000``, ``22/08``), the clitics ``'s``/``'re``/``'ve``/``'ll``/``'d``/``'m`` apart,
   and every other symbol alone (``Paris.`` is ``Paris`` and ``.``). Offsets index the
   original Python string (code points), so ``text[start:end]`` is always the word,
   whatever the tokenizer's normalisation (lower-casing, accent stripping) does to it.
2. **Sub-tokens.** The words go to the tokenizer with ``is_split_into_words=True``, in
   length-sorted chunks with dynamic padding, as in training (``components/token_finetune.py``).
   A word's tag and probability are its first sub-token's (the others are ignored, as they
   were by the loss); a word with no sub-token is ``O``. A text longer than the token
   window is tagged in consecutive windows cut after sentence ends where possible
   (:func:`word_windows`): no word is left untagged, and words see no context across a cut.
3. **Entities** (:func:`decode_entities`) from the IOB2 word tags: ``B-X`` starts an entity,
   ``I-X`` continues an open ``X`` entity; an ``I-X`` after ``O`` or after another type
   starts a new entity (seqeval's default, lenient decoding, as ``conlleval`` does; the
   strict mode would drop it). An entity's text is the original text from its first word's
   start to its last word's end (inner spaces kept), and its ``score`` is the MEAN of its
   words' tag probabilities.

The forward pass is :func:`components.inference.forward_logits` (torch, fp32 or native bf16).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from components.errors import ServingError
from components.inference import (
    DEFAULT_CHUNK_SIZE,
    Classifier,
    effective_precision,
    forward_logits,
    length_sorted_chunks,
    softmax,
    token_window,
)

OUTSIDE = "O"
SENTENCE_ENDS = frozenset({".", "!", "?"})
# Word characters, plus combining marks so a decomposed (NFD) "e" + U+0308 stays one word.
_W = r"[\w\u0300-\u036f\u1ab0-\u1aff\u1dc0-\u1dff\u20d0-\u20ff\ufe20-\ufe2f]"
_CLITIC = r"['’](?:s|re|ve|ll|d|m)(?!\w)"
WORD_PATTERN = re.compile(
    rf"(?:[^\W\d_]\.){{2,}}"  # abbreviations: U.S., e.g.
    rf"|\d+(?:[.,:/]\d+)+"  # numbers and dates: 1,000  3.5  22/08/1996
    rf"|{_CLITIC}"  # clitics split as CoNLL does: Smith 's
    rf"|{_W}+(?:-{_W}+)*(?:(?!{_CLITIC})['’]{_W}+)*"  # words: Anglo-Dutch, O'Neill
    r"|[^\w\s]",  # any other symbol alone: . , ( ) " ...
    re.IGNORECASE,
)


@dataclass(frozen=True)
class Word:
    """A word of a raw text: its characters and where they are (``text[start:end]``)."""

    text: str
    start: int
    end: int


@dataclass(frozen=True)
class WordTags:
    """The tagger's answer for the words of one text."""

    tags: list[str]
    probabilities: list[float]  # of each word's tag
    windows: int  # token windows the words were tagged in (0: no words)


def split_words(text: str) -> list[Word]:
    """The words of a raw text with character offsets (see the module docstring)."""
    return [
        Word(match.group(), match.start(), match.end()) for match in WORD_PATTERN.finditer(text)
    ]


def first_sub_tokens(word_ids: Sequence[int | None]) -> list[tuple[int, int]]:
    """(position, word index) of the first sub-token of each word in a tokenised sentence."""
    return [
        (position, word)
        for position, word in enumerate(word_ids)
        if word is not None and (position == 0 or word_ids[position - 1] != word)
    ]


def load_tagger(
    model_dir: str | Path, precision: str = "fp32", max_length: int | None = None
) -> Classifier:
    """Load a fine-tuned token classifier (``AutoModelForTokenClassification``, tag set in
    ``id2label``) and its fast tokenizer, for the torch runtime.

    Args:
        model_dir: a ``save_pretrained`` folder.
        precision: ``bf16`` runs under CPU bf16 autocast where the CPU has native bf16.
        max_length: token window; default is the model's (see ``token_window``).

    Raises:
        ServingError: the folder holds no token classifier or no fast tokenizer.
    """
    from transformers import AutoConfig, AutoModelForTokenClassification, AutoTokenizer

    config = AutoConfig.from_pretrained(str(model_dir))
    if not is_token_classifier(config):
        raise ServingError(
            f"{model_dir} holds a {', '.join(config.architectures or ['?'])} model, not a "
            "token classifier (…ForTokenClassification)"
        )
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir), use_fast=True)
    if not tokenizer.is_fast:
        raise ServingError(f"{model_dir}: a tagger needs a fast tokenizer (word offsets)")
    model = AutoModelForTokenClassification.from_pretrained(str(model_dir)).eval()
    labels = [config.id2label[index] for index in range(config.num_labels)]
    return Classifier(
        model,
        tokenizer,
        labels,
        token_window(tokenizer, config, max_length),
        effective_precision(precision, "torch"),
        "torch",
    )


def is_token_classifier(config: Any) -> bool:
    """Whether a Hugging Face config describes a token-classification model."""
    return any(name.endswith("ForTokenClassification") for name in config.architectures or [])


def word_windows(tokenizer: Any, words: list[str], max_length: int) -> list[tuple[int, int]]:
    """Consecutive ``(start, end)`` word ranges whose sub-tokens fit the token window.

    A text longer than the window is tagged window by window, so no word goes untagged:
    each window is filled with as many words as fit and cut after the last sentence end
    (``.``, ``!``, ``?``) inside it, or after the last word that fits when it has none. A
    word longer than the whole window sits alone in its own (its first sub-token, which
    carries its tag, is always inside).
    """
    if not words:
        return []
    budget = max(1, max_length - tokenizer.num_special_tokens_to_add())
    counts = [0] * len(words)
    encoded = tokenizer(words, is_split_into_words=True, add_special_tokens=False)
    for word in encoded.word_ids():
        if word is not None:
            counts[word] += 1
    windows, start, used = [], 0, 0
    for index, count in enumerate(counts):
        if used + count > budget and index > start:
            ends = [cut for cut in range(index, start, -1) if words[cut - 1] in SENTENCE_ENDS]
            cut = ends[0] if ends else index
            windows.append((start, cut))
            start, used = cut, sum(counts[cut:index])
        used += count
    windows.append((start, len(words)))
    return windows


def tag_chunk(
    tagger: Classifier, sentences: list[list[str]]
) -> list[tuple[list[str], list[float]]]:
    """Tag the words of a few windows in one forward pass (dynamic padding): each word's
    tag and its probability."""
    encoded = tagger.tokenizer(
        sentences,
        is_split_into_words=True,
        padding=True,
        truncation=True,  # only a single word longer than the window is cut
        max_length=tagger.max_length,
        return_tensors="np",
    )
    probabilities = softmax(forward_logits(tagger, encoded))
    results = []
    for row, words in enumerate(sentences):
        tags, scores = [OUTSIDE] * len(words), [1.0] * len(words)
        for position, word in first_sub_tokens(encoded.word_ids(row)):
            best = int(probabilities[row, position].argmax())
            tags[word] = tagger.labels[best]
            scores[word] = float(probabilities[row, position, best])
        results.append((tags, scores))
    return results


def tag_words(
    tagger: Classifier, sentences: Sequence[Sequence[str]], chunk_size: int = DEFAULT_CHUNK_SIZE
) -> list[WordTags]:
    """Each word's tag and its probability, for many sentences, in input order.

    Sentences are cut into token windows (:func:`word_windows`); windows are scored in
    chunks of similar length. An empty sentence has no words and no window.
    """
    windows = [
        (row, start, end)
        for row, words in enumerate(sentences)
        for start, end in word_windows(tagger.tokenizer, list(words), tagger.max_length)
    ]
    pieces = [list(sentences[row][start:end]) for row, start, end in windows]
    tags = [[OUTSIDE] * len(words) for words in sentences]
    scores = [[1.0] * len(words) for words in sentences]
    counts = [0] * len(sentences)
    lengths = [sum(len(word) for word in piece) for piece in pieces]
    for chunk in length_sorted_chunks(lengths, chunk_size):
        tagged = tag_chunk(tagger, [pieces[index] for index in chunk])
        for index, (piece_tags, piece_scores) in zip(chunk, tagged, strict=True):
            row, start, end = windows[index]
            tags[row][start:end], scores[row][start:end] = piece_tags, piece_scores
            counts[row] += 1
    return [WordTags(*answer) for answer in zip(tags, scores, counts, strict=True)]


def decode_entities(
    text: str, words: Sequence[Word], tags: Sequence[str], probabilities: Sequence[float]
) -> list[dict[str, Any]]:
    """Entities from IOB2 word tags, lenient about a stray ``I-X`` (it starts an entity).

    Returns:
        One dict per entity, in text order: ``label`` (the type, ``PER``), ``text``
        (``text[start:end]``), ``start``, ``end`` (character offsets) and ``score`` (mean
        tag probability of its words).
    """
    entities: list[dict[str, Any]] = []
    spans: list[tuple[str, list[int]]] = []  # (type, word indices)
    for index, tag in enumerate(tags):
        prefix, kind = (tag[:2], tag[2:]) if tag[:2] in ("B-", "I-") else ("", "")
        if not kind:
            continue
        continues = (
            prefix == "I-" and spans and spans[-1][0] == kind and spans[-1][1][-1] == index - 1
        )
        if continues:
            spans[-1][1].append(index)
        else:
            spans.append((kind, [index]))
    for kind, indices in spans:
        start, end = words[indices[0]].start, words[indices[-1]].end
        score = float(np.mean([probabilities[index] for index in indices]))
        entities.append(
            {"label": kind, "text": text[start:end], "start": start, "end": end, "score": score}
        )
    return entities


def predict_entities(
    tagger: Classifier, texts: Sequence[str], chunk_size: int = DEFAULT_CHUNK_SIZE
) -> list[dict[str, Any]]:
    """Tag raw texts.

    Args:
        tagger: from :func:`load_tagger`.
        texts: any number of strings; one longer than the token window is tagged window
            by window (:func:`word_windows`).
        chunk_size: windows per forward pass.

    Returns:
        One dict per text, in input order: ``entities`` (see :func:`decode_entities`) and
        ``windows`` (token windows it was tagged in; more than 1 for a long text).
    """
    words = [split_words(str(text)) for text in texts]
    tagged = tag_words(tagger, [[word.text for word in row] for row in words], chunk_size)
    return [
        {
            "entities": decode_entities(str(text), row, answer.tags, answer.probabilities),
            "windows": answer.windows,
        }
        for text, row, answer in zip(texts, words, tagged, strict=True)
    ]
