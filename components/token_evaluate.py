"""Evaluate a token classifier on the frozen test split: entity scores as seqeval counts them.

    ratchet --config configs/conll.yaml evaluate     # data.task: token-classification

Each word's tag is its first sub-token's (words the window cuts off are tagged ``O``).
Scores: entity-level micro precision, recall and F1 in seqeval's strict IOB2 mode (an
entity counts only when its type and both ends match), the same per entity type, the
macro F1 over types, word-level accuracy, and the single-sentence latency. ``f1`` repeats
``entity_f1``, so registry rows list the entity micro-F1 where classifiers list theirs.
Files: ``eval.json``, ``entity_confusion.csv``/``.png`` (word-level, gold type x predicted
type, ``O`` included), ``missed_entities.csv`` and ``spurious_entities.csv`` (the most
frequent gold entities not found and predicted entities not in the gold, by type and
text), and ``predictions.jsonl``.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from components.behaviour import CheckResult, behaviour_metrics
from components.config import EvalConfig
from components.errors import ConfigError
from components.evaluate import metric_key
from components.evaluation_plots import plot_confusion_matrix
from components.token_finetune import encode_words, entity_scores, predict_word_tags

EVAL_FILE = "eval.json"
PREDICTIONS_FILE = "predictions.jsonl"
OUTSIDE = "O"
# Runs a NER behaviour suite (components/token_behaviour.py) with a sentence tagger.
BehaviourRunner = Callable[[Callable[[list[list[str]]], list[list[str]]]], list[CheckResult]]


@dataclass
class TokenEvaluationReport:
    """Scores and files of one evaluation (``metrics`` and ``artifacts`` as the
    classification report has them, so tracking logs both alike)."""

    metrics: dict[str, float]
    labels: list[str]
    gold: list[list[str]]
    predicted: list[list[str]]
    test_split_md5: str
    artifacts: dict[str, Path] = field(default_factory=dict)
    tokens: list[list[str]] = field(default_factory=list)
    behaviour: list[CheckResult] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        return {
            "task": "token-classification",
            "metrics": self.metrics,
            "labels": self.labels,
            "test_sentences": len(self.gold),
            "test_split_md5": self.test_split_md5,
            "behaviour": [result.to_dict() for result in self.behaviour],
        }


def fingerprint_sentences(sentences: Sequence[Sequence[str]], tags: Sequence[Sequence[str]]) -> str:
    """Fingerprint of the tagged test sentences, in order (equal md5: same test split)."""
    digest = hashlib.md5()
    for words, sentence_tags in zip(sentences, tags, strict=True):
        digest.update(f"{' '.join(sentence_tags)}\t{' '.join(words)}\n".encode())
    return digest.hexdigest()


def sentence_entities(tags: Sequence[Sequence[str]]) -> list[set[tuple[str, int, int]]]:
    """Per sentence, its entities as (type, first word, end word) under strict IOB2."""
    from seqeval.scheme import IOB2, Entities

    found: list[set[tuple[str, int, int]]] = [set() for _ in tags]
    for row in Entities([list(t) for t in tags], IOB2, suffix=False).entities:
        for entity in row:
            found[entity.sent_id].add((entity.tag, entity.start, entity.end))
    return found


def entity_metrics(gold: Sequence[Sequence[str]], predicted: Sequence[Sequence[str]]) -> dict:
    """Micro and per-type entity precision/recall/F1 (seqeval strict IOB2), the macro F1
    over types, word accuracy, and ``f1`` = ``entity_f1``."""
    from seqeval.metrics import classification_report
    from seqeval.scheme import IOB2

    metrics = entity_scores(gold, predicted)
    report = classification_report(
        [list(g) for g in gold],
        [list(p) for p in predicted],
        mode="strict",
        scheme=IOB2,
        output_dict=True,
        zero_division=0,
    )
    types = [name for name in report if not name.endswith(" avg")]
    for kind in types:
        key = metric_key(kind)
        metrics[f"entity_precision.{key}"] = float(report[kind]["precision"])
        metrics[f"entity_recall.{key}"] = float(report[kind]["recall"])
        metrics[f"entity_f1.{key}"] = float(report[kind]["f1-score"])
        metrics[f"entity_support.{key}"] = float(report[kind]["support"])
    metrics["entity_f1_macro"] = float(report["macro avg"]["f1-score"]) if types else 0.0
    metrics["f1"] = metrics["entity_f1"]
    return metrics


def type_confusion(
    gold: Sequence[Sequence[str]], predicted: Sequence[Sequence[str]], types: list[str]
) -> pd.DataFrame:
    """Word-level confusion of entity types (``O`` first): rows gold, columns predicted."""
    names = [OUTSIDE, *types]
    index = {name: position for position, name in enumerate(names)}
    matrix = np.zeros((len(names), len(names)), dtype=np.int64)
    for gold_tags, predicted_tags in zip(gold, predicted, strict=True):
        for gold_tag, predicted_tag in zip(gold_tags, predicted_tags, strict=True):
            matrix[index[gold_tag[2:] or OUTSIDE], index[predicted_tag[2:] or OUTSIDE]] += 1
    return pd.DataFrame(matrix, index=names, columns=names)


def entity_errors(
    tokens: Sequence[Sequence[str]],
    gold: Sequence[Sequence[str]],
    predicted: Sequence[Sequence[str]],
    top: int,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The most frequent missed (gold, not predicted exactly) and spurious (predicted,
    not in the gold) entities, as (type, text, count) tables."""
    missed: Counter[tuple[str, str]] = Counter()
    spurious: Counter[tuple[str, str]] = Counter()
    gold_entities, predicted_entities = sentence_entities(gold), sentence_entities(predicted)
    for words, wanted, found in zip(tokens, gold_entities, predicted_entities, strict=True):
        for kind, start, end in wanted - found:
            missed[(kind, " ".join(words[start:end]))] += 1
        for kind, start, end in found - wanted:
            spurious[(kind, " ".join(words[start:end]))] += 1

    def table(counts: Counter[tuple[str, str]]) -> pd.DataFrame:
        rows = [(kind, text, count) for (kind, text), count in counts.most_common(top)]
        return pd.DataFrame(rows, columns=["type", "text", "count"])

    return table(missed), table(spurious)


class TokenTagger:
    """A saved token classifier that tags pre-split sentences."""

    def __init__(self, model_dir: Path, max_length: int | None, precision: str) -> None:
        import torch
        from transformers import AutoModelForTokenClassification, AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(model_dir)
        self.model = AutoModelForTokenClassification.from_pretrained(model_dir)
        self.model.to(torch.device("cpu")).eval()
        config = self.model.config
        self.labels = [config.id2label[index] for index in range(config.num_labels)]
        self.max_length = max_length or self.tokenizer.model_max_length
        self.precision = "bf16" if precision == "bf16" else "fp32"

    def tag(self, sentences: Sequence[Sequence[str]], batch_size: int) -> list[list[str]]:
        encoded = encode_words(self.tokenizer, sentences, None, self.max_length)
        predicted, _ = predict_word_tags(
            self.model,
            encoded,
            [len(words) for words in sentences],
            batch_size,
            self.tokenizer.pad_token_id,
            self.precision,  # type: ignore[arg-type]
        )
        return [[self.labels[index] for index in row] for row in predicted]


def measure_tagging_latency(
    tagger: TokenTagger, sentences: Sequence[Sequence[str]], samples: int
) -> dict[str, float]:
    """p50/p99 milliseconds of tagging one sentence at a time."""
    timings = []
    for words in list(sentences)[:samples]:
        start = time.perf_counter()
        tagger.tag([words], 1)
        timings.append((time.perf_counter() - start) * 1000)
    if not timings:
        return {}
    return {
        "latency_p50_ms": float(np.percentile(timings, 50)),
        "latency_p99_ms": float(np.percentile(timings, 99)),
    }


def write_token_report_files(
    test: pd.DataFrame,
    predicted: list[list[str]],
    report: TokenEvaluationReport,
    top: int,
    output_dir: Path,
) -> dict[str, Path]:
    """The tables, the confusion plot and the predictions; returns name -> path."""
    gold = report.gold
    types = sorted({tag[2:] for tag in report.labels if tag != OUTSIDE})
    confusion = type_confusion(gold, predicted, types)
    missed, spurious = entity_errors(test["tokens"].tolist(), gold, predicted, top)
    files = {
        "entity_confusion.csv": output_dir / "entity_confusion.csv",
        "missed_entities.csv": output_dir / "missed_entities.csv",
        "spurious_entities.csv": output_dir / "spurious_entities.csv",
        PREDICTIONS_FILE: output_dir / PREDICTIONS_FILE,
    }
    confusion.to_csv(files["entity_confusion.csv"])
    missed.to_csv(files["missed_entities.csv"], index=False)
    spurious.to_csv(files["spurious_entities.csv"], index=False)
    lines = (
        json.dumps({"tokens": list(t), "tags": list(g), "predicted": p}, ensure_ascii=False)
        for t, g, p in zip(test["tokens"], gold, predicted, strict=True)
    )
    files[PREDICTIONS_FILE].write_text("".join(f"{line}\n" for line in lines), "utf-8")
    plot = output_dir / "entity_confusion.png"
    files["entity_confusion.png"] = plot_confusion_matrix(
        confusion.to_numpy(), confusion.index, plot
    )
    return files


def evaluate_token_model(
    model_dir: Path,
    test: pd.DataFrame,
    labels: list[str],
    eval_cfg: EvalConfig,
    output_dir: Path,
    max_length: int | None = None,
    precision: str = "fp32",
    behaviour: BehaviourRunner | None = None,
) -> TokenEvaluationReport:
    """Tag ``test`` with the model in ``model_dir``, score it, write the evaluation files.

    Args:
        model_dir: a Hugging Face token-classification folder.
        test: the frozen test split (``tokens``, ``tags`` lists).
        labels: the tag set in id order; must match the model's ``id2label``.
        eval_cfg: batch size, latency samples, and ``top_mistakes`` (rows per error table).
        output_dir: where the files are written (created).
        max_length: the token window (``model.max_length``); None: the tokenizer's.
        precision: ``serving.precision``, so the model is scored as it will be served.
        behaviour: runs the NER behaviour suite with the model's tagger (None: no checks).

    Raises:
        ConfigError: the model's tags differ from the data's.
    """
    tagger = TokenTagger(model_dir, max_length, precision)
    if tagger.labels != list(labels):
        raise ConfigError(f"model tags {tagger.labels} differ from the data's tags {labels}")
    output_dir.mkdir(parents=True, exist_ok=True)
    sentences = test["tokens"].tolist()
    gold = [list(tags) for tags in test["tags"]]
    predicted = tagger.tag(sentences, eval_cfg.batch_size)
    metrics = entity_metrics(gold, predicted)
    metrics.update(measure_tagging_latency(tagger, sentences, eval_cfg.latency_samples))
    results = (
        [] if behaviour is None else behaviour(lambda words: tagger.tag(words, eval_cfg.batch_size))
    )
    metrics.update(behaviour_metrics(results))
    report = TokenEvaluationReport(
        metrics=metrics,
        labels=list(labels),
        gold=gold,
        predicted=predicted,
        test_split_md5=fingerprint_sentences(sentences, gold),
        tokens=[list(words) for words in sentences],
        behaviour=results,
    )
    report.artifacts = write_token_report_files(
        test, predicted, report, eval_cfg.top_mistakes, output_dir
    )
    eval_path = output_dir / EVAL_FILE
    eval_path.write_text(json.dumps(report.summary(), indent=2), encoding="utf-8")
    report.artifacts[EVAL_FILE] = eval_path
    return report
