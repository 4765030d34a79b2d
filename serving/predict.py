"""Pure inference for the served classifier: tokenize, batch, score, report truncation.

No HTTP and no BentoML here: :func:`load_classifier` reads a Hugging Face folder once,
and :func:`predict_texts` turns a list of texts into one prediction dict per text. The
service (``serving/service.py``) and the benchmark call the same two functions.
"""

from __future__ import annotations

import contextlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from components.hardware import cpu_has_native_bf16

logger = logging.getLogger(__name__)

Precision = Literal["fp32", "bf16"]

# Texts are scored in chunks of similar length so one long text does not pad the rest.
DEFAULT_CHUNK_SIZE = 32


@dataclass(frozen=True)
class Classifier:
    """A loaded model with what inference needs to know about it."""

    model: Any  # transformers PreTrainedModel, kept untyped so importing is cheap
    tokenizer: Any
    labels: list[str]
    max_length: int
    precision: Precision


def container_cores() -> int:
    """CPU cores this process may use (cgroup/affinity aware), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def configure_threads(num_threads: int | None) -> int:
    """Set torch's intra-op threads (default: the container's cores) and one inter-op thread.

    Returns:
        The intra-op thread count in effect.
    """
    import torch

    threads = num_threads or container_cores()
    torch.set_num_threads(threads)
    with contextlib.suppress(RuntimeError):  # inter-op threads can only be set once
        torch.set_num_interop_threads(1)
    return threads


def load_classifier(
    model_dir: str | Path, precision: Precision = "fp32", max_length: int | None = None
) -> Classifier:
    """Load a fine-tuned sequence classifier and its fast tokenizer for inference.

    Args:
        model_dir: a ``save_pretrained`` folder with ``id2label`` in its config.
        precision: ``bf16`` runs the forward pass under CPU bf16 autocast, on CPUs with
            native bf16 (AVX512-BF16/AMX); elsewhere it falls back to fp32 with a warning.
        max_length: token window; default is the model's position limit (at most 512).
    """
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    import components.modeling  # noqa: F401  (registers the mean-pooling classifier)
    from components.kernels.first_position import cut_last_layer

    tokenizer = AutoTokenizer.from_pretrained(str(model_dir), use_fast=True)
    model = AutoModelForSequenceClassification.from_pretrained(str(model_dir)).eval()
    cut_last_layer(model)  # a [CLS] head reads one position of the last layer: skip the rest
    labels = [model.config.id2label[index] for index in range(model.config.num_labels)]
    limits = [512, int(getattr(model.config, "max_position_embeddings", 512) or 512)]
    if tokenizer.model_max_length and tokenizer.model_max_length < 1_000_000:
        limits.append(int(tokenizer.model_max_length))
    window = min(limits) if max_length is None else min([max_length, *limits])
    if precision == "bf16" and not cpu_has_native_bf16():
        # Without native bf16 the CPU emulates it: slower than fp32, for no gain.
        logger.warning("serving.precision is bf16 but this CPU lacks bf16 support; using fp32")
        precision = "fp32"
    return Classifier(model, tokenizer, labels, window, precision)


def length_sorted_chunks(lengths: list[int], chunk_size: int) -> list[list[int]]:
    """Indices grouped into chunks of similar length (longest first), to limit padding."""
    order = sorted(range(len(lengths)), key=lambda index: -lengths[index])
    return [order[start : start + chunk_size] for start in range(0, len(order), chunk_size)]


def score_chunk(classifier: Classifier, texts: list[str]) -> tuple[Any, list[bool]]:
    """Class probabilities (numpy, one row per text) and whether each text was truncated."""
    import torch

    encoded = classifier.tokenizer(
        texts,
        padding=True,
        truncation=True,
        max_length=classifier.max_length,
        return_tensors="pt",
    )
    # Fast tokenizers keep what truncation cut off; non-empty means the text was cut.
    truncated = [bool(encoding.overflowing) for encoding in encoded.encodings]
    use_bf16 = classifier.precision == "bf16"
    with (
        torch.inference_mode(),
        torch.autocast("cpu", dtype=torch.bfloat16, enabled=use_bf16),
    ):
        logits = classifier.model(**encoded).logits
    return logits.float().softmax(dim=-1).numpy(), truncated


def predict_texts(
    classifier: Classifier, texts: list[str], chunk_size: int = DEFAULT_CHUNK_SIZE
) -> list[dict[str, Any]]:
    """Classify texts.

    Args:
        classifier: from :func:`load_classifier`.
        texts: any number of strings; each longer than the token window is truncated.
        chunk_size: texts per forward pass.

    Returns:
        One dict per text, in input order: ``label``, ``score`` (its probability),
        ``probabilities`` (class name -> probability) and ``truncated``.
    """
    results: list[dict[str, Any]] = [{} for _ in texts]
    for chunk in length_sorted_chunks([len(text) for text in texts], chunk_size):
        probabilities, truncated = score_chunk(classifier, [texts[index] for index in chunk])
        for row, was_truncated, index in zip(probabilities, truncated, chunk, strict=True):
            best = int(row.argmax())
            results[index] = {
                "label": classifier.labels[best],
                "score": float(row[best]),
                "probabilities": {
                    name: float(p) for name, p in zip(classifier.labels, row, strict=True)
                },
                "truncated": was_truncated,
            }
    return results
