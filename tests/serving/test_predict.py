"""Pure pieces of serving: the predict function and the build helpers (no server)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from components.errors import ServingError
from serving.build import key_metrics, lineage_tags, pinned_packages, store_name, tagged_metrics
from serving.predict import length_sorted_chunks, load_classifier, predict_texts
from tests.conftest import PROJECT_ROOT


@pytest.fixture(scope="module")
def tiny_classifier_dir(tiny_bert_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from transformers import AutoTokenizer, BertForSequenceClassification

    folder = tmp_path_factory.mktemp("tiny-classifier")
    BertForSequenceClassification.from_pretrained(
        str(tiny_bert_dir), num_labels=2, id2label={0: "negative", 1: "positive"}
    ).save_pretrained(folder)
    AutoTokenizer.from_pretrained(str(tiny_bert_dir)).save_pretrained(folder)
    return folder


def test_predict_texts_keeps_order_and_flags_truncation(tiny_classifier_dir: Path) -> None:
    classifier = load_classifier(tiny_classifier_dir)
    texts = ["short", "word " * 400, "a slightly longer text here", "word " * 50]

    together = predict_texts(classifier, texts, chunk_size=2)
    alone = [predict_texts(classifier, [text])[0] for text in texts]

    assert classifier.max_length == 128  # the tiny model's position limit
    assert [row["truncated"] for row in together] == [False, True, False, False]
    for batched, single in zip(together, alone, strict=True):
        assert batched["label"] == single["label"]
        assert batched["score"] == pytest.approx(single["score"], abs=1e-4)
        assert sum(batched["probabilities"].values()) == pytest.approx(1.0, abs=1e-5)
        assert batched["score"] == max(batched["probabilities"].values())


def test_served_and_evaluated_cls_models_compute_the_last_layer_at_cls_only(
    tiny_classifier_dir: Path, tiny_mean_classifier: Path
) -> None:
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from components.evaluate import TextClassifier
    from components.kernels.first_position import FirstPositionLayer

    texts = ["a fine film", "dull , slow and far too long for what it says", "ok"]
    whole = AutoModelForSequenceClassification.from_pretrained(tiny_classifier_dir).eval()
    encoded = AutoTokenizer.from_pretrained(tiny_classifier_dir)(
        texts, padding=True, return_tensors="pt"
    )
    with torch.inference_mode():
        expected = whole(**encoded).logits.softmax(dim=-1)
    served = load_classifier(tiny_classifier_dir)
    evaluated = TextClassifier.load(tiny_classifier_dir)
    for model in (served.model, evaluated.model):
        assert isinstance(model.bert.encoder.layer[-1], FirstPositionLayer)
    probabilities = [list(row["probabilities"].values()) for row in predict_texts(served, texts)]
    torch.testing.assert_close(torch.tensor(probabilities), expected, rtol=0, atol=1e-6)
    torch.testing.assert_close(
        torch.from_numpy(evaluated.predict_proba(texts)).float(), expected, rtol=0, atol=1e-6
    )
    # The mean-pooling head reads every position: its last layer stays whole.
    mean = load_classifier(tiny_mean_classifier).model
    assert not isinstance(mean.bert.encoder.layer[-1], FirstPositionLayer)


def test_bf16_falls_back_to_fp32_without_cpu_support(tiny_classifier_dir: Path) -> None:
    from components.hardware import cpu_has_native_bf16

    classifier = load_classifier(tiny_classifier_dir, precision="bf16")

    assert classifier.precision == ("bf16" if cpu_has_native_bf16() else "fp32")
    assert predict_texts(classifier, ["fine"])[0]["label"] in {"negative", "positive"}


def test_length_sorted_chunks_group_similar_lengths() -> None:
    assert length_sorted_chunks([3, 10, 1, 7], chunk_size=2) == [[1, 3], [0, 2]]


def test_pinned_packages_reads_versions_from_constraints(tmp_path: Path) -> None:
    constraints = tmp_path / "constraints.txt"
    constraints.write_text(
        "# resolved lock\ntorch==2.13.0+cpu\nPyYAML==6.0.3  # yaml\n"
        "--extra-index-url https://example.invalid/simple\n"
        "great_expectations==1.18.0\nnumpy>=2\n"
    )

    assert pinned_packages(["torch", "pyyaml", "Great-Expectations"], constraints) == [
        "torch==2.13.0",
        "pyyaml==6.0.3",
        "Great-Expectations==1.18.0",
    ]
    # A range is not a pin.
    with pytest.raises(ServingError, match="pins no version for \\['numpy'\\]"):
        pinned_packages(["numpy"], constraints)


def test_pinned_packages_names_an_unreadable_lock_line(tmp_path: Path) -> None:
    constraints = tmp_path / "constraints.txt"
    constraints.write_text("torch==2.13.0\ntorch 2.13\n")
    with pytest.raises(ServingError, match=r"constraints.txt:2: not a requirement"):
        pinned_packages(["torch"], constraints)


def test_the_real_lock_pins_the_bento_packages() -> None:
    from serving.build import BENTOFILE

    names = yaml.safe_load(BENTOFILE.read_text())["python"]["packages"]
    pins = pinned_packages(names, PROJECT_ROOT / "constraints.txt")
    assert [pin.split("==")[0] for pin in pins] == names
    assert all(re.fullmatch(r"[\w.-]+==\d[\w.]*", pin) for pin in pins), pins


def test_version_tags_split_into_lineage_and_metrics() -> None:
    tags = {
        "prepared_data_md5": "abc",
        "git_commit": "123",
        "mlflow.source.name": "x",
        "metric.accuracy": "0.91",
        "metric.broken": "n/a",
    }
    metrics = {"accuracy": 0.9, "eval_macro_f1": 0.8, "train_step_time": 1.0, "lr": 1e-4}

    assert lineage_tags(tags) == {"prepared_data_md5": "abc", "git_commit": "123"}
    assert tagged_metrics(tags) == {"accuracy": 0.91}
    assert key_metrics(metrics) == {"accuracy": 0.9, "eval_macro_f1": 0.8}
    assert store_name("Ratchet SST2/v2") == "ratchet-sst2-v2"


def test_mean_pooling_model_serves_and_ignores_padding(tiny_mean_classifier: Path) -> None:
    classifier = load_classifier(tiny_mean_classifier)
    assert type(classifier.model).__name__ == "MeanPoolingBertForSequenceClassification"
    texts = ["the movie was superb 1", "the plot was awful 2 and " + "long " * 30]
    together = predict_texts(classifier, texts)  # the short text is padded in this batch
    alone = [predict_texts(classifier, [text])[0] for text in texts]
    assert [row["label"] for row in together] == ["positive", "negative"]
    for batched, single in zip(together, alone, strict=True):
        assert batched["score"] == pytest.approx(single["score"], abs=1e-5)


def test_window_comes_from_the_saved_tokenizer(tiny_classifier_dir: Path, tmp_path: Path) -> None:
    """Fine-tuning saves its token window in the tokenizer; serving must truncate there."""
    import shutil

    from transformers import AutoTokenizer

    folder = tmp_path / "trained-at-16"
    shutil.copytree(tiny_classifier_dir, folder)
    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    tokenizer.model_max_length = 16
    tokenizer.save_pretrained(folder)

    classifier = load_classifier(folder)
    rows = predict_texts(classifier, ["word " * 10, "word " * 20])
    assert classifier.max_length == 16
    assert [row["truncated"] for row in rows] == [False, True]
    assert load_classifier(folder, max_length=8).max_length == 8  # an explicit cap still wins


def test_the_bento_includes_every_project_module_the_service_imports() -> None:
    # Tests import the service from the editable install, so a module missing from the
    # Bento's include list would only fail inside the container: check the list itself.
    import ast

    import yaml

    root = Path(__file__).resolve().parents[2]
    included = set(yaml.safe_load((root / "serving" / "bentofile.yaml").read_text())["include"])
    assert all((root / name).is_file() for name in included)
    needed: set[str] = set()
    queue = ["serving/service.py", "serving/token_service.py"]  # the classifier, the tagger
    while queue:
        source = queue.pop()
        needed.add(source)
        for node in ast.walk(ast.parse((root / source).read_text())):
            names = [alias.name for alias in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom) and node.module:
                # `from package import module` imports a module too.
                names = [node.module, *(f"{node.module}.{alias.name}" for alias in node.names)]
            for name in names:
                if name.split(".")[0] not in ("components", "serving"):
                    continue
                parts = name.split(".")
                # A module, a package's __init__, and the __init__ of every package above.
                paths = ["/".join(parts) + ".py", "/".join(parts) + "/__init__.py"]
                paths += ["/".join(parts[:end]) + "/__init__.py" for end in range(1, len(parts))]
                for path in paths:
                    if (root / path).is_file() and path not in needed and path not in queue:
                        queue.append(path)
    assert "components/kernels/first_position.py" in needed
    assert {"components/token_inference.py", "serving/contract.py"} <= needed
    assert "components/config/overrides.py" in needed  # a package's modules count too
    assert needed - included == set()


class BarrierSession:
    """An ONNX Runtime session stand-in whose passes only finish side by side: each run
    waits at a barrier for ``parties`` runs, so passes run one after another time out."""

    def __init__(self, parties: int) -> None:
        import threading

        self.barrier = threading.Barrier(parties, timeout=20)
        self.threads: set[str] = set()

    def get_inputs(self) -> list[object]:
        from types import SimpleNamespace

        return [SimpleNamespace(name=name) for name in ("input_ids", "attention_mask")]

    def run(self, outputs: list[str], feeds: dict[str, object]) -> list[object]:
        import threading

        import numpy as np

        ids = np.asarray(feeds["input_ids"])
        assert outputs == ["logits"] and ids.shape[0] == 1  # one text per pass
        self.threads.add(threading.current_thread().name)
        self.barrier.wait()
        return [np.array([[float(ids.shape[1]), 0.0]], dtype=np.float32)]


def test_int8_passes_run_side_by_side_in_input_order(tiny_classifier_dir: Path) -> None:
    from concurrent.futures import ThreadPoolExecutor

    import numpy as np
    from transformers import AutoTokenizer

    from components.inference import Classifier, predict_proba, softmax

    tokenizer = AutoTokenizer.from_pretrained(str(tiny_classifier_dir))
    session = BarrierSession(parties=2)
    texts = ["a b c d e f", "a", "a b c", "word " * 200]
    with ThreadPoolExecutor(2, thread_name_prefix="ratchet-pass") as passes:
        classifier = Classifier(
            session, tokenizer, ["negative", "positive"], 16, runtime="onnx-int8", passes=passes
        )
        probabilities, truncated = predict_proba(classifier, texts)

    # Each text alone in its pass, unpadded ([CLS] ... [SEP], cut at the window of 16).
    lengths = [len(tokenizer(text, truncation=True, max_length=16)["input_ids"]) for text in texts]
    assert lengths == [8, 3, 5, 16]
    expected = softmax(np.array([[length, 0.0] for length in lengths], dtype=np.float64))
    np.testing.assert_array_equal(probabilities, expected)
    assert truncated.tolist() == [False, False, False, True]
    assert len(session.threads) == 2 and all(
        name.startswith("ratchet-pass") for name in session.threads
    )
