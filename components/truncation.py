"""How much of the data the token window cuts off, measured before any training.

A text longer than ``model.max_length`` tokens is truncated in training, evaluation and
serving alike: the model never sees its end, so a sentiment expressed there is invisible
to it. The retrain flow measures the share of training and test texts that are cut,
records it with the run and the registered version (``data.truncated_fraction_train`` /
``_test``), and stops above ``data.checks.max_truncated_fraction``; evaluation reports the
truncated texts as a slice of their own.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from components.errors import DataError

ENCODE_BATCH = 1024
TRAIN_KEY = "data.truncated_fraction_train"
TEST_KEY = "data.truncated_fraction_test"


def token_counts(texts: Sequence[str], tokenizer: Any) -> np.ndarray:
    """Tokens per text as the model sees it, special tokens ([CLS], [SEP]) included."""
    counts: list[int] = []
    for start in range(0, len(texts), ENCODE_BATCH):
        batch = list(texts[start : start + ENCODE_BATCH])
        encoded = tokenizer(batch, add_special_tokens=True, truncation=False, verbose=False)
        counts.extend(len(ids) for ids in encoded["input_ids"])
    return np.asarray(counts, dtype=np.int64)


def truncated_mask(texts: Sequence[str], tokenizer: Any, max_length: int) -> np.ndarray:
    """True for each text longer than ``max_length`` tokens (so cut by the window)."""
    return token_counts(texts, tokenizer) > max_length


def truncated_fraction(texts: Sequence[str], tokenizer: Any, max_length: int) -> float:
    """The share of ``texts`` longer than ``max_length`` tokens (0 for no texts)."""
    if len(texts) == 0:
        return 0.0
    return float(truncated_mask(texts, tokenizer, max_length).mean())


def measure_truncation(
    train_texts: Sequence[str], test_texts: Sequence[str], tokenizer: Any, max_length: int
) -> dict[str, float]:
    """``data.truncated_fraction_train`` and ``data.truncated_fraction_test``."""
    return {
        TRAIN_KEY: truncated_fraction(train_texts, tokenizer, max_length),
        TEST_KEY: truncated_fraction(test_texts, tokenizer, max_length),
    }


def check_truncation(fractions: dict[str, float], max_length: int, max_fraction: float) -> None:
    """Stop when the window cuts more than ``max_fraction`` of the training or test texts.

    Raises:
        DataError: naming the shares and both settings that decide them.
    """
    over = {key: share for key, share in fractions.items() if share > max_fraction}
    if over:
        shares = ", ".join(
            f"{share:.1%} of the {key.rsplit('_', 1)[-1]} texts" for key, share in over.items()
        )
        raise DataError(
            f"{shares} are longer than model.max_length={max_length} tokens and would be "
            f"truncated, more than data.checks.max_truncated_fraction={max_fraction:g} "
            "allows: raise model.max_length (the model's limit permitting), or raise "
            "data.checks.max_truncated_fraction in params.yaml to accept the loss"
        )


def measure_prepared_truncation(
    config: Any, paths: Any, base_model: str | None = None
) -> dict[str, float]:
    """Measure the prepared train and test splits at ``model.max_length`` with the base
    model's tokenizer (the run's: pretraining and fine-tuning keep it); ``base_model`` is
    ``model.base`` already resolved (resolved against the project root when not given).

    For ``data.task`` token-classification the share is of sentences longer than
    ``model.max_length`` sub-word tokens, their words tokenised as the tagger sees them.

    Returns:
        The two fractions, keyed ``data.truncated_fraction_train`` / ``_test``.
    """
    from transformers import AutoTokenizer

    from components.base_model import resolve_base_model
    from components.prepare import load_prepared

    tokenizer = AutoTokenizer.from_pretrained(
        base_model or resolve_base_model(config.model.base, paths.project_root)
    )
    if config.data.task == "token-classification":
        return measure_token_truncation(paths.prepared_dir, tokenizer, config.model.max_length)
    data = load_prepared(paths.prepared_dir)
    return measure_truncation(
        data.train["text"].tolist(), data.test["text"].tolist(), tokenizer, config.model.max_length
    )


def measure_token_truncation(prepared_dir: Any, tokenizer: Any, max_length: int) -> dict:
    """Shares of prepared train and test sentences longer than ``max_length`` sub-word
    tokens (special tokens included): the words the window cuts are tagged ``O``."""
    from components.token_prepare import load_prepared_tokens
    from components.token_validate import subword_lengths

    data = load_prepared_tokens(prepared_dir)

    def share(tokens: list[list[str]]) -> float:
        lengths = np.asarray(subword_lengths(tokens, tokenizer), dtype=np.int64)
        return float((lengths > max_length).mean()) if len(lengths) else 0.0

    return {
        TRAIN_KEY: share(data.train["tokens"].tolist()),
        TEST_KEY: share(data.test["tokens"].tolist()),
    }
