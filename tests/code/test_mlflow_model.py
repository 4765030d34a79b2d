"""Packaging a fine-tuned HF folder as an MLflow pyfunc model from code."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import mlflow
import pandas as pd
import pytest

from components.mlflow_model import (
    class_names,
    classifier_signature,
    download_hf_model,
    log_classifier_model,
    serving_files,
)


def test_signature_has_one_probability_column_per_class() -> None:
    signature = classifier_signature(["neg", "neu", "pos"])
    assert signature.inputs.input_names() == ["text"]
    assert signature.outputs.input_names() == ["label", "score", "prob_neg", "prob_neu", "prob_pos"]


def test_serving_files_refuse_pickled_weights(tmp_path: Path) -> None:
    source = tmp_path / "model"
    source.mkdir()
    (source / "config.json").write_text('{"id2label": {"1": "pos", "0": "neg"}}')
    with pytest.raises(FileNotFoundError, match="has no model.safetensors"):
        serving_files(source, tmp_path / "staged")
    (source / "model.safetensors").write_bytes(b"weights")
    (source / "pytorch_model.bin").write_bytes(b"pickle")
    (source / "optimizer.pt").write_bytes(b"pickle")
    staged = serving_files(source, tmp_path / "staged")
    assert sorted(path.name for path in staged.iterdir()) == ["config.json", "model.safetensors"]
    assert class_names(source) == ["neg", "pos"]


def experiment_in(state_dir: Path) -> str:
    """An experiment whose artifacts stay in the test's state folder: the default
    experiment of a SQLite store writes them to ./mlruns in the working directory."""
    return mlflow.create_experiment("ratchet", artifact_location=(state_dir / "art").as_uri())


@pytest.mark.slow
def test_logged_model_predicts_and_holds_no_pickles(
    tiny_classifiers: dict[str, Path], state_dir: Path, tmp_path: Path
) -> None:
    mlflow.set_tracking_uri(f"sqlite:///{state_dir / 'mlflow.db'}")
    with mlflow.start_run(experiment_id=experiment_in(state_dir)):
        info = log_classifier_model(tiny_classifiers["good"])
    assert info.signature.outputs.input_names()[:2] == ["label", "score"]
    local = Path(mlflow.artifacts.download_artifacts(info.model_uri, dst_path=str(tmp_path / "m")))
    names = {path.name for path in local.rglob("*") if path.is_file()}
    assert "model.safetensors" in names
    assert not [n for n in names if n.endswith((".pkl", ".pickle", ".bin", ".pt", ".cloudpickle"))]
    assert (local / "input_example.json").is_file()

    model = mlflow.pyfunc.load_model(info.model_uri)
    out = model.predict(pd.DataFrame({"text": ["the movie was superb 1", "the plot was awful 2"]}))
    assert out["label"].tolist() == ["positive", "negative"]
    assert (out["prob_negative"] + out["prob_positive"]).round(6).tolist() == [1.0, 1.0]
    folder = download_hf_model(info.model_uri, tmp_path / "hf")
    assert (folder / "model.safetensors").is_file() and class_names(folder) == [
        "negative",
        "positive",
    ]


# Loads a logged model in a process that cannot import Ratchet's ``components`` package,
# as a reviewer's notebook or another service would.
LOAD_WITHOUT_RATCHET = """
import sys
import importlib.abc


class NoRatchet(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name == "components" or name.startswith("components."):
            raise ImportError("Ratchet is not installed here")
        return None


sys.meta_path.insert(0, NoRatchet())
sys.path = [p for p in sys.path if p not in ("", ".")]
import mlflow
import pandas as pd

mlflow.set_tracking_uri(sys.argv[1])
model = mlflow.pyfunc.load_model(sys.argv[2])
texts = ["the movie was superb 1", "the plot was awful 2"]
print(",".join(model.predict(pd.DataFrame({"text": texts}))["label"]))
"""


@pytest.mark.slow
def test_mean_pooling_model_loads_without_ratchet(
    tiny_mean_classifier: Path, state_dir: Path, tmp_path: Path
) -> None:
    uri = f"sqlite:///{state_dir / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    with mlflow.start_run(experiment_id=experiment_in(state_dir)):
        info = log_classifier_model(tiny_mean_classifier)
    script = tmp_path / "load.py"
    script.write_text(LOAD_WITHOUT_RATCHET, encoding="utf-8")
    loaded = subprocess.run(
        [sys.executable, str(script), uri, info.model_uri],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert loaded.returncode == 0, loaded.stderr[-3000:]
    assert loaded.stdout.strip().splitlines()[-1] == "positive,negative"
