"""MLflow pyfunc "model from code" that wraps a Hugging Face sequence classifier.

MLflow stores this file as text next to the weights (no pickled code) and loads it with
``mlflow.pyfunc.load_model(uri)``; the weights and tokenizer are the ``hf_model`` artifact.
Input: a DataFrame with a ``text`` column. Output: ``label``, ``score`` and ``prob_<label>``
per class. Inside Ratchet it scores through ``components/inference.py``, as evaluation and
the Bento do; outside Ratchet (no ``components`` package) through ``inference.py``, the
copy of that module logged beside the model.
"""

from __future__ import annotations

from typing import Any

import mlflow
import pandas as pd
from mlflow.pyfunc import PythonModel, PythonModelContext

BATCH_SIZE = 64


class TextClassifierModel(PythonModel):
    def load_context(self, context: PythonModelContext) -> None:
        try:
            from components import inference
        except ImportError:  # outside Ratchet: the copies logged beside the model (code_paths)
            import inference  # type: ignore[import-not-found,no-redef]
        self.inference: Any = inference
        self.classifier = inference.load_classifier(context.artifacts["hf_model"])

    def predict(
        self, context: PythonModelContext, model_input: pd.DataFrame, params: dict | None = None
    ) -> pd.DataFrame:
        texts = [str(text) for text in model_input["text"].tolist()]
        probabilities, _ = self.inference.predict_proba(self.classifier, texts, BATCH_SIZE)
        labels = self.classifier.labels
        rows = []
        for row in probabilities:
            best = int(row.argmax())
            record = {"label": labels[best], "score": float(row[best])}
            record.update({f"prob_{name}": float(p) for name, p in zip(labels, row, strict=True)})
            rows.append(record)
        return pd.DataFrame(rows, columns=["label", "score", *(f"prob_{n}" for n in labels)])


mlflow.models.set_model(TextClassifierModel())
