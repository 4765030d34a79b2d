"""MLflow pyfunc "model from code" that wraps a Hugging Face sequence classifier.

MLflow stores this file as text next to the weights (no pickled code) and loads it with
``mlflow.pyfunc.load_model(uri)``; the weights and tokenizer are the ``hf_model`` artifact.
Input: a DataFrame with a ``text`` column. Output: ``label``, ``score`` and ``prob_<label>``
per class.
"""

from __future__ import annotations

import mlflow
import pandas as pd
from mlflow.pyfunc import PythonModel, PythonModelContext


class TextClassifierModel(PythonModel):
    def load_context(self, context: PythonModelContext) -> None:
        import torch
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        try:  # registers the mean-pooling classifier with the Auto classes
            import components.modeling  # noqa: F401
        except ImportError:  # outside Ratchet: the copy logged beside the model (code_paths)
            import modeling  # type: ignore[import-not-found]  # noqa: F401

        folder = context.artifacts["hf_model"]
        self.tokenizer = AutoTokenizer.from_pretrained(folder)
        self.model = AutoModelForSequenceClassification.from_pretrained(folder).eval()
        self.labels = [self.model.config.id2label[i] for i in range(self.model.config.num_labels)]
        self.max_length = min(int(self.tokenizer.model_max_length or 512), 512)
        self.torch = torch

    def predict(
        self, context: PythonModelContext, model_input: pd.DataFrame, params: dict | None = None
    ) -> pd.DataFrame:
        texts = [str(text) for text in model_input["text"].tolist()]
        rows = []
        batch_size = 64
        for start in range(0, len(texts), batch_size):
            batch = self.tokenizer(
                texts[start : start + batch_size],
                padding=True,
                truncation=True,
                max_length=self.max_length,
                return_tensors="pt",
            )
            with self.torch.inference_mode():
                probabilities = self.model(**batch).logits.float().softmax(dim=-1).numpy()
            for row in probabilities:
                best = int(row.argmax())
                record = {"label": self.labels[best], "score": float(row[best])}
                probabilities_by_name = zip(self.labels, row, strict=True)
                record.update({f"prob_{name}": float(p) for name, p in probabilities_by_name})
                rows.append(record)
        return pd.DataFrame(rows)


mlflow.models.set_model(TextClassifierModel())
