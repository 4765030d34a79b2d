"""Text properties that drift monitoring compares, computed the same way at evaluation
time (the champion's reference) and in the Bento (each served text).

Nothing here keeps the text: per text, its length, token count, the share of tokens the
model's tokenizer maps to its unknown token, charset shares, and a low-dimensional
projection of the model's own input embeddings (the mean of its word-embedding rows over
the text's tokens, times a fixed random projection). The projection needs no forward pass,
so the server computes it off the request path, whatever runtime scores the text.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

# Dimensions of the embedding projection, and the seed of the projection matrix: the
# reference and the served features must use the same matrix.
EMBEDDING_DIMS = 16
PROJECTION_SEED = 20261130
MAX_TOKENS = 512
EMBEDDING_WEIGHT_SUFFIX = "word_embeddings.weight"
# Where the server's inference log and feedback store live in the state folder; the
# writer (serving/traffic_log.py) and the readers (components/traffic.py, feedback) share them.
TRAFFIC_DIR_NAME = "traffic"
MONITOR_NAME = "classify"
FEEDBACK_DIR_NAME = "feedback"
FEEDBACK_FILE_NAME = "feedback.jsonl"
NUMERIC_FEATURES = ("length", "tokens", "unk_rate", "ascii_letter_share", "uppercase_share")
EMBEDDING_COLUMN = "embedding"


@dataclass(frozen=True)
class Featurizer:
    """The model's tokenizer and its projected word-embedding table."""

    tokenizer: Any
    projected_embeddings: np.ndarray  # (vocabulary, EMBEDDING_DIMS), float32


def projection_matrix(hidden_size: int) -> np.ndarray:
    """The fixed random projection from the model's hidden size to ``EMBEDDING_DIMS``."""
    rng = np.random.default_rng(PROJECTION_SEED)
    matrix = rng.standard_normal((hidden_size, EMBEDDING_DIMS)) / np.sqrt(EMBEDDING_DIMS)
    return matrix.astype(np.float32)


def read_word_embeddings(model_dir: Path) -> np.ndarray:
    """The word-embedding matrix of a Hugging Face folder, read alone (not the model).

    Raises:
        FileNotFoundError: the folder has no ``*.safetensors`` weights with a
            ``word_embeddings.weight`` tensor.
    """
    from safetensors import safe_open

    for weights in sorted(model_dir.glob("*.safetensors")):
        with safe_open(str(weights), framework="np") as handle:
            for key in handle.keys():  # noqa: SIM118 (safe_open is not a mapping)
                if key.endswith(EMBEDDING_WEIGHT_SUFFIX):
                    return np.asarray(handle.get_tensor(key), dtype=np.float32)
    raise FileNotFoundError(f"{model_dir}: no safetensors tensor named *{EMBEDDING_WEIGHT_SUFFIX}")


def load_featurizer(model_dir: str | Path) -> Featurizer:
    """The featurizer of the model saved in ``model_dir`` (a ``save_pretrained`` folder)."""
    from transformers import AutoTokenizer

    folder = Path(model_dir)
    tokenizer = AutoTokenizer.from_pretrained(str(folder), use_fast=True)
    embeddings = read_word_embeddings(folder)
    projected = embeddings @ projection_matrix(embeddings.shape[1])
    return Featurizer(tokenizer=tokenizer, projected_embeddings=projected.astype(np.float32))


def text_hash(text: str) -> str:
    """A short stable hash that identifies a text without keeping it."""
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:16]


def charset_shares(text: str) -> tuple[float, float]:
    """Share of characters that are ASCII letters, and share of letters in upper case."""
    # map() over the str methods: the server runs this on every served text.
    letters = sum(map(str.isalpha, text))
    if text.isascii():
        ascii_letters = letters
    else:
        ascii_letters = sum(char.isalpha() for char in text if char.isascii())
    upper = sum(map(str.isupper, text))
    return ascii_letters / max(len(text), 1), upper / max(letters, 1)


def text_features(featurizer: Featurizer, texts: list[str]) -> list[dict[str, Any]]:
    """One feature row per text (see the module docstring); no text is kept.

    Returns:
        Rows with ``hash``, the :data:`NUMERIC_FEATURES` and ``embedding`` (a list of
        :data:`EMBEDDING_DIMS` floats; zeros for a text without tokens).
    """
    if not texts:
        return []
    tokenizer = featurizer.tokenizer
    encoded = tokenizer(texts, add_special_tokens=False, truncation=True, max_length=MAX_TOKENS)[
        "input_ids"
    ]
    unk_id = tokenizer.unk_token_id
    rows = []
    for text, ids in zip(texts, encoded, strict=True):
        ascii_share, upper_share = charset_shares(text)
        if ids:
            embedding = featurizer.projected_embeddings[ids].mean(axis=0)
        else:
            embedding = np.zeros(EMBEDDING_DIMS, dtype=np.float32)
        rows.append(
            {
                "hash": text_hash(text),
                "length": len(text),
                "tokens": len(ids),
                "unk_rate": ids.count(unk_id) / max(len(ids), 1),
                "ascii_letter_share": ascii_share,
                "uppercase_share": upper_share,
                EMBEDDING_COLUMN: [round(value, 5) for value in embedding.tolist()],
            }
        )
    return rows
