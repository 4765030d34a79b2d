"""The tagger's inference core (components/token_inference.py), the build's task dispatch
(serving/tasks.py) and the batcher both Bentos share (serving/contract.py): no server,
the tiny tagger in-process."""

from __future__ import annotations

import json
import unicodedata
from pathlib import Path

import pytest

from components.config import RatchetConfig
from components.errors import ServingError
from components.state import ProjectPaths
from components.token_inference import (
    Word,
    WordTags,
    decode_entities,
    load_tagger,
    predict_entities,
    split_words,
    tag_words,
    word_windows,
)
from tests.conftest import PROJECT_ROOT

UNICODE_TEXT = "Zoë Ñúñez visited São Paulo."


def words_of(text: str) -> list[str]:
    words = split_words(text)
    assert all(text[word.start : word.end] == word.text for word in words)
    return [word.text for word in words]


def test_words_split_like_conll_tokens_with_offsets_into_the_raw_text() -> None:
    assert words_of(UNICODE_TEXT) == ["Zoë", "Ñúñez", "visited", "São", "Paulo", "."]
    assert split_words(UNICODE_TEXT)[3] == Word("São", 18, 21)
    text = "Smith's U.S. trip cost 1,000 dollars (Anglo-Dutch), O'Neill said: \"don't\"."
    assert words_of(text) == [
        "Smith", "'s", "U.S.", "trip", "cost", "1,000", "dollars", "(", "Anglo-Dutch", ")",
        ",", "O'Neill", "said", ":", '"', "don't", '"', ".",
    ]  # fmt: skip
    # Decomposed accents (NFD) stay inside their word; offsets count code points.
    decomposed = unicodedata.normalize("NFD", UNICODE_TEXT)
    assert len(decomposed) == len(UNICODE_TEXT) + 5  # ë Ñ ú ñ ã: two code points each
    assert words_of(decomposed) == [unicodedata.normalize("NFD", w) for w in words_of(UNICODE_TEXT)]
    assert words_of("on 22/08/1996 😀!  \t") == ["on", "22/08/1996", "😀", "!"]
    assert split_words(" \n ") == []


def test_entities_decode_iob2_leniently_with_mean_scores() -> None:
    text = "Anna Smith met Bo in Oslo Rome ."
    words = split_words(text)
    tags = ["B-PER", "I-PER", "O", "I-PER", "O", "B-LOC", "B-LOC", "O"]
    probabilities = [0.9, 0.7, 1.0, 0.6, 1.0, 0.8, 0.5, 1.0]

    entities = decode_entities(text, words, tags, probabilities)

    assert [(e["label"], e["text"], e["start"], e["end"]) for e in entities] == [
        ("PER", "Anna Smith", 0, 10),
        ("PER", "Bo", 15, 17),  # a stray I-PER starts an entity (seqeval's lenient mode)
        ("LOC", "Oslo", 21, 25),  # B-LOC after B-LOC: two entities
        ("LOC", "Rome", 26, 30),
    ]
    assert [e["score"] for e in entities] == pytest.approx([0.8, 0.6, 0.8, 0.5])
    # An I- of another type ends the open entity and starts its own.
    switched = decode_entities("Anna Smith", split_words("Anna Smith"), ["B-PER", "I-LOC"], [1, 1])
    assert [(e["label"], e["text"]) for e in switched] == [("PER", "Anna"), ("LOC", "Smith")]


def spans(row: dict) -> list[tuple[str, str, int, int]]:
    return [(e["label"], e["text"], e["start"], e["end"]) for e in row["entities"]]


def test_entities_of_multi_sub_token_unicode_words_slice_the_original_text(
    tiny_tagger_dir: Path,
) -> None:
    tagger = load_tagger(tiny_tagger_dir)
    texts = [UNICODE_TEXT, "Farid Smith flew to Quito.", "In Zürich, Greta Tanaka met friends."]
    assert tagger.tokenizer.tokenize("Farid Quito") == ["far", "##id", "quit", "##o"]

    together = predict_entities(tagger, texts, chunk_size=2)

    assert [spans(row) for row in together] == [
        [("PER", "Zoë Ñúñez", 0, 9), ("LOC", "São Paulo", 18, 27)],
        [("PER", "Farid Smith", 0, 11), ("LOC", "Quito", 20, 25)],
        [("LOC", "Zürich", 3, 9), ("PER", "Greta Tanaka", 11, 23)],
    ]
    for text, row in zip(texts, together, strict=True):
        assert row["windows"] == 1
        assert all(text[e["start"] : e["end"]] == e["text"] for e in row["entities"])
        alone = predict_entities(tagger, [text])[0]
        assert spans(alone) == spans(row)
        scores = [e["score"] for e in row["entities"]]
        assert scores == pytest.approx([e["score"] for e in alone["entities"]], abs=1e-5)
        assert all(0.5 < score <= 1.0 for score in scores)
    nfd = unicodedata.normalize("NFD", UNICODE_TEXT)
    assert spans(predict_entities(tagger, [nfd])[0]) == [
        ("PER", unicodedata.normalize("NFD", "Zoë Ñúñez"), 0, 13),
        ("LOC", unicodedata.normalize("NFD", "São Paulo"), 22, 32),
    ]


def test_a_text_longer_than_the_window_is_tagged_window_by_window(tiny_tagger_dir: Path) -> None:
    tagger = load_tagger(tiny_tagger_dir)
    sentence = "Farid Smith flew to Quito. "  # 27 characters, 7 sub-tokens, 6 words
    long_text = (sentence * 30).strip()  # 210 sub-tokens: two windows of 128

    rows = predict_entities(tagger, [long_text, sentence])

    assert [row["windows"] for row in rows] == [2, 1]
    # Every sentence is tagged, the last ones beyond the first window too.
    assert spans(rows[0]) == [
        span
        for k in range(30)
        for span in [
            ("PER", "Farid Smith", 27 * k, 27 * k + 11),
            ("LOC", "Quito", 27 * k + 20, 27 * k + 25),
        ]
    ]
    # A lone combining accent is a word with no sub-token: O, with certainty.
    [answer] = tag_words(tagger, [["Farid", "\u0301", "Smith"]])
    assert answer.tags[1] == "O" and answer.probabilities[1] == 1.0
    assert tag_words(tagger, [[], ["Quito"]])[0] == WordTags([], [], 0)


def test_windows_are_cut_after_a_sentence_end_and_fit_the_window(tiny_tagger_dir: Path) -> None:
    tokenizer = load_tagger(tiny_tagger_dir).tokenizer
    words = ["Anna", "met", "Bo", ".", "They", "left", "."]  # one sub-token each
    assert [len(tokenizer.tokenize(word)) for word in words] == [1] * 7

    # 7 = [CLS] + 5 words + [SEP]: "They" fits, "left" does not; the cut goes after ".".
    assert word_windows(tokenizer, words, 7) == [(0, 4), (4, 7)]
    assert word_windows(tokenizer, words, 9) == [(0, 7)]
    assert word_windows(tokenizer, ["a"] * 7, 7) == [(0, 5), (5, 7)]  # no sentence end
    # far ##id is longer than a 1-sub-token window: alone in its own.
    assert word_windows(tokenizer, ["Farid", "ok"], 3) == [(0, 1), (1, 2)]
    assert word_windows(tokenizer, [], 7) == []


def test_a_sequence_classifier_is_not_loaded_as_a_tagger(tiny_classifiers: dict) -> None:
    with pytest.raises(ServingError, match="BertForSequenceClassification model, not a token"):
        load_tagger(tiny_classifiers["good"])


def test_the_version_task_picks_the_service_and_the_model_must_agree(
    tiny_tagger_dir: Path, tiny_classifiers: dict, tmp_path: Path
) -> None:
    from serving.build import build_options
    from serving.tasks import (
        check_model_task,
        runtime_labels,
        served_runtime,
        version_task,
    )

    assert version_task({}) == "text-classification"
    assert version_task({"task": "token-classification"}) == "token-classification"
    with pytest.raises(ServingError, match="tagged task='question-answering'; Ratchet serves"):
        version_task({"task": "question-answering"})
    check_model_task(tiny_tagger_dir, "token-classification")
    check_model_task(tiny_classifiers["good"], "text-classification")
    with pytest.raises(ServingError) as untagged:
        check_model_task(tiny_tagger_dir, "text-classification")
    assert "model is a BertForTokenClassification: tag the version " in str(untagged.value)
    assert str(untagged.value).endswith("task=token-classification")
    with pytest.raises(ServingError, match="tag the version task=text-classification"):
        check_model_task(tiny_classifiers["good"], "token-classification")
    no_tags = tmp_path / "no-tags"
    no_tags.mkdir()
    config = json.loads((tiny_tagger_dir / "config.json").read_text())
    (no_tags / "config.json").write_text(json.dumps({**config, "id2label": {}}))
    with pytest.raises(ServingError, match="has no id2label"):
        check_model_task(no_tags, "token-classification")

    settings = RatchetConfig()  # serving.runtime onnx-int8
    assert served_runtime(settings, "text-classification") == "onnx-int8"
    assert served_runtime(settings, "token-classification") == "torch"
    assert runtime_labels(settings, "text-classification") == {}
    assert runtime_labels(settings, "token-classification") == {
        "runtime.fallback": "serving.runtime onnx-int8 is exported for sequence classifiers "
        "only: this token classifier is served by torch"
    }
    paths = ProjectPaths(project_root=PROJECT_ROOT, state_dir=tmp_path / "state")
    assert build_options(paths, {}, "token-classification")["service"] == (
        "serving.token_service:RatchetTagger"
    )
    assert build_options(paths, {})["service"] == "serving.service:RatchetClassifier"


def test_the_shared_batcher_scores_concurrent_requests_together() -> None:
    """serving/contract.py's TextBatcher, in-process: a request alone is scored at once;
    requests arriving meanwhile share a forward pass and each gets its own answers."""
    import time

    import anyio

    from serving.contract import TextBatcher

    passes: list[list[str]] = []

    def predict(texts: list[str]) -> list[str]:
        passes.append(list(texts))
        time.sleep(0.2)  # a forward pass: the other requests queue meanwhile
        return [text.upper() for text in texts]

    batcher = TextBatcher(predict)
    answers: dict[int, list[str]] = {}

    async def request(index: int) -> None:
        answers[index] = await batcher([f"a{index}", f"b{index}"])

    async def six_at_once() -> None:
        async with anyio.create_task_group() as group:
            for index in range(6):
                group.start_soon(request, index)

    anyio.run(six_at_once)

    assert answers == {index: [f"A{index}", f"B{index}"] for index in range(6)}
    assert passes[0] == ["a0", "b0"]  # alone: not queued
    assert 2 <= len(passes) < 6  # the five others shared forward passes
    assert sorted(text for texts in passes for text in texts) == sorted(
        f"{letter}{index}" for index in range(6) for letter in "ab"
    )
