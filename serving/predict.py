"""Inference for the served classifier: one prediction dict per text.

No HTTP and no BentoML here. Loading, tokenising, batching and scoring are the one
inference module's (``components/inference.py``, shared with evaluation, the gate and the
MLflow model); this module sets the threads and shapes the answers. The service
(``serving/service.py``) and the benchmarks call :func:`load_classifier` and
:func:`predict_texts`.
"""

from __future__ import annotations

import contextlib
from typing import Any

from components.inference import (
    DEFAULT_CHUNK_SIZE,
    Classifier,
    Precision,
    Runtime,
    container_cores,
    length_sorted_chunks,
    load_classifier,
    predict_proba,
)

__all__ = [
    "Classifier",
    "Precision",
    "Runtime",
    "configure_threads",
    "container_cores",
    "length_sorted_chunks",
    "load_classifier",
    "predict_texts",
]


def configure_threads(num_threads: int | None) -> int:
    """Set torch's intra-op threads (default: the container's cores) and one inter-op thread.

    Returns:
        The intra-op thread count in effect (an ONNX Runtime session takes the same).
    """
    import torch

    threads = num_threads or container_cores()
    torch.set_num_threads(threads)
    with contextlib.suppress(RuntimeError):  # inter-op threads can only be set once
        torch.set_num_interop_threads(1)
    return threads


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
    probabilities, truncated = predict_proba(classifier, texts, chunk_size)
    results = []
    for row, was_truncated in zip(probabilities, truncated, strict=True):
        best = int(row.argmax())
        results.append(
            {
                "label": classifier.labels[best],
                "score": float(row[best]),
                "probabilities": {
                    name: float(p) for name, p in zip(classifier.labels, row, strict=True)
                },
                "truncated": bool(was_truncated),
            }
        )
    return results
