"""Package a fine-tuned Hugging Face folder as an MLflow model, and get it back.

The model is an MLflow pyfunc "model from code" (``components/pyfunc_classifier.py``):
weights stay safetensors, and no pickled code sits on the loading path. Anyone with
access to the registry can then run::

    mlflow.pyfunc.load_model("models:/ratchet-sst2@champion").predict(pd.DataFrame({"text": [...]}))
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd
from mlflow.models import ModelSignature
from mlflow.models.model import ModelInfo
from mlflow.types import ColSpec, Schema, TensorSpec

PYFUNC_CODE = Path(__file__).with_name("pyfunc_classifier.py")
TOKEN_PYFUNC_CODE = Path(__file__).with_name("pyfunc_token_classifier.py")
# Logged beside the model, so that loaders outside Ratchet can read mean-pooling models.
MODELING_CODE = Path(__file__).with_name("modeling.py")
# The pyfunc model scores through the one inference module, logged beside it likewise.
INFERENCE_CODE = Path(__file__).with_name("inference.py")
HF_ARTIFACT_KEY = "hf_model"
EXAMPLE_TEXTS = ["a gripping, beautifully acted film", "a dull and lifeless script"]
WEIGHT_SUFFIXES_REFUSED = {".bin", ".pt", ".pth", ".pkl", ".ckpt"}


def class_names(model_dir: Path) -> list[str]:
    """Class names in id order, from the model's ``config.json``."""
    config = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))
    id2label = config.get("id2label") or {}
    return [id2label[key] for key in sorted(id2label, key=int)]


def classifier_signature(labels: list[str]) -> ModelSignature:
    outputs: list[ColSpec | TensorSpec] = [ColSpec("string", "label"), ColSpec("double", "score")]
    outputs += [ColSpec("double", f"prob_{name}") for name in labels]
    return ModelSignature(inputs=Schema([ColSpec("string", "text")]), outputs=Schema(outputs))


def serving_files(model_dir: Path, staging_dir: Path) -> Path:
    """Copy the files needed to serve into ``staging_dir`` (safetensors only, no pickles)."""
    if not (model_dir / "model.safetensors").is_file():
        raise FileNotFoundError(f"{model_dir} has no model.safetensors")
    staging_dir.mkdir(parents=True, exist_ok=True)
    for file in model_dir.iterdir():
        if file.is_file() and file.suffix not in WEIGHT_SUFFIXES_REFUSED:
            shutil.copy2(file, staging_dir / file.name)
    return staging_dir


def log_classifier_model(model_dir: Path, name: str = "model") -> ModelInfo:
    """Log a fine-tuned HF folder to the active MLflow run as a pyfunc model.

    Args:
        model_dir: ``save_pretrained`` output with ``id2label`` in its config.
        name: the logged model's name within the run.

    Returns:
        MLflow's ``ModelInfo``; ``model_info.model_uri`` can be registered.
    """
    return log_hf_model(
        model_dir,
        name,
        python_model=str(PYFUNC_CODE),
        signature=classifier_signature(class_names(model_dir)),
        input_example=pd.DataFrame({"text": EXAMPLE_TEXTS}),
        code_paths=[str(MODELING_CODE), str(INFERENCE_CODE)],
    )


def log_token_model(model_dir: Path, name: str = "model") -> ModelInfo:
    """Log a fine-tuned token classifier (NER) to the active MLflow run as a pyfunc model
    (``components/pyfunc_token_classifier.py``: text in, words and their tags out), with
    the same ``hf_model`` artifact layout as :func:`log_classifier_model`, so
    :func:`download_hf_model` returns its Hugging Face folder.

    Returns:
        MLflow's ``ModelInfo``; ``model_info.model_uri`` can be registered.
    """
    return log_hf_model(
        model_dir,
        name,
        python_model=str(TOKEN_PYFUNC_CODE),
        signature=ModelSignature(inputs=Schema([ColSpec("string", "text")])),
    )


def log_hf_model(model_dir: Path, name: str, **pyfunc: Any) -> ModelInfo:
    """Log ``model_dir``'s serving files as the ``hf_model`` artifact of a pyfunc model
    from code (``pyfunc``: ``python_model``, ``signature`` and the other arguments of
    ``mlflow.pyfunc.log_model``)."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        staged = serving_files(model_dir, Path(tmp) / "hf_model")
        return mlflow.pyfunc.log_model(
            name=name,
            artifacts={HF_ARTIFACT_KEY: str(staged)},
            pip_requirements=["torch", "transformers", "pandas", "mlflow"],
            **pyfunc,
        )


def download_hf_model(model_uri: str, dst: Path) -> Path:
    """Download a logged or registered model and return its Hugging Face folder.

    Args:
        model_uri: e.g. ``models:/ratchet-sst2@champion``, ``models:/ratchet-sst2/3``.
        dst: an empty or new folder to download into.
    """
    dst.mkdir(parents=True, exist_ok=True)
    local = Path(mlflow.artifacts.download_artifacts(artifact_uri=model_uri, dst_path=str(dst)))
    matches = [
        p.parent for p in local.rglob("config.json") if (p.parent / "model.safetensors").exists()
    ]
    if not matches:
        raise FileNotFoundError(f"{model_uri} holds no Hugging Face folder (looked in {local})")
    return matches[0]
