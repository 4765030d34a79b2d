"""MLflow pyfunc "model from code" that wraps a Hugging Face token classifier (NER).

Logged by ``components/mlflow_model.py`` for ``data.task`` token-classification, with the
same ``hf_model`` artifact (safetensors, tokenizer, ``id2label``) as the text classifier,
and loaded with ``mlflow.pyfunc.load_model(uri)``. Input: a DataFrame with a ``text``
column. Output per text: ``words`` (the text split as CoNLL splits it, punctuation
apart) and ``tags`` (one IOB2 tag per word: its first sub-token's). Self-contained
(transformers only), so it loads outside Ratchet; the Bento's ``POST /entities`` is the
served interface with character offsets.
"""

from __future__ import annotations

import re

import mlflow
import pandas as pd
from mlflow.pyfunc import PythonModel, PythonModelContext

WORDS = re.compile(r"\w+(?:['’.-]\w+)*|[^\w\s]")


class TokenClassifierModel(PythonModel):
    def load_context(self, context: PythonModelContext) -> None:
        from transformers import AutoModelForTokenClassification, AutoTokenizer

        folder = context.artifacts["hf_model"]
        self.tokenizer = AutoTokenizer.from_pretrained(folder)
        self.model = AutoModelForTokenClassification.from_pretrained(folder).eval()

    def tag(self, words: list[str]) -> list[str]:
        import torch

        if not words:
            return []
        encoded = self.tokenizer(
            words, is_split_into_words=True, truncation=True, return_tensors="pt"
        )
        with torch.inference_mode():
            ids = self.model(**encoded).logits[0].argmax(-1).tolist()
        tags, seen = ["O"] * len(words), set()
        for position, word in enumerate(encoded.word_ids(0)):
            if word is not None and word not in seen:  # a word's tag: its first sub-token's
                seen.add(word)
                tags[word] = self.model.config.id2label[ids[position]]
        return tags

    def predict(
        self, context: PythonModelContext, model_input: pd.DataFrame, params: dict | None = None
    ) -> pd.DataFrame:
        words = [WORDS.findall(str(text)) for text in model_input["text"].tolist()]
        return pd.DataFrame({"words": words, "tags": [self.tag(row) for row in words]})


mlflow.models.set_model(TokenClassifierModel())
