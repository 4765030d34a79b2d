"""The one way Ratchet runs a classifier: load, tokenise, batch, score.

Evaluation (``components/evaluate.py``), the gate's champion re-score
(``components/registry.py``), the MLflow pyfunc model (``components/pyfunc_classifier.py``)
and the Bento (``serving/predict.py``) all call :func:`load_classifier` and
:func:`predict_proba`, so a text gets the same probabilities wherever it is scored.

A runtime (``serving.runtime``) is how the forward pass runs: ``torch`` (the Hugging Face
model, fp32 or CPU bf16 autocast), ``onnx`` (ONNX Runtime on the exported, graph-optimised
fp32 graph) or ``onnx-int8`` (the same graph with dynamically quantised int8 weights; see
``components/export.py``). Tokenisation, dynamic padding and length-sorted chunks are the
same for every runtime.

The MLflow model carries a copy of this file (``code_paths``), so it imports nothing from
Ratchet on the torch fp32 path that a loader outside Ratchet would lack.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args

import numpy as np

try:
    from components.errors import ServingError
except ImportError:  # pragma: no cover  (the copy logged beside an MLflow model, no Ratchet)
    ServingError = RuntimeError  # type: ignore[misc,assignment]

logger = logging.getLogger(__name__)

Precision = Literal["fp32", "bf16"]
Runtime = Literal["torch", "onnx", "onnx-int8"]
RUNTIMES: tuple[str, ...] = get_args(Runtime)
# Exported graphs live in this sub-folder of the Hugging Face folder they were made from.
ONNX_FOLDER = "onnx"
ONNX_FILES = {"onnx": "model.onnx", "onnx-int8": "model-int8.onnx"}
# Texts are scored in chunks of similar length so one long text does not pad the rest.
DEFAULT_CHUNK_SIZE = 32
# Runtimes that score one text per forward pass: dynamic int8 quantisation takes one
# activation scale over the whole input tensor, so in a batch a text's probabilities would
# depend on its batch-mates (gaps up to 0.075 and label flips seen on the SST-2 champion),
# and what the Bento serves would differ from what parity proved. Their passes run side by
# side, one thread each (see :func:`load_classifier`).
BATCH_DEPENDENT_RUNTIMES = frozenset({"onnx-int8"})
POSITION_LIMIT = 512


@dataclass(frozen=True)
class Classifier:
    """A loaded model with what inference needs to know about it.

    Attributes:
        model: the torch model (``runtime="torch"``) or an ONNX Runtime session.
        tokenizer: the folder's fast tokenizer.
        labels: class names in id order.
        max_length: token window; longer texts are truncated.
        precision: ``bf16`` only for torch on a CPU with native bf16, else ``fp32``.
        runtime: one of :data:`RUNTIMES`.
        passes: for :data:`BATCH_DEPENDENT_RUNTIMES`, the threads that run single-text
            forward passes side by side (None: one after another on the caller's thread).
    """

    model: Any  # kept untyped so importing this module stays cheap
    tokenizer: Any
    labels: list[str]
    max_length: int
    precision: Precision = "fp32"
    runtime: Runtime = "torch"
    passes: ThreadPoolExecutor | None = field(default=None, compare=False, repr=False)

    def predict_proba(
        self, texts: Sequence[str], batch_size: int = DEFAULT_CHUNK_SIZE
    ) -> np.ndarray:
        """Class probabilities, shape ``(len(texts), classes)``, in input order."""
        return predict_proba(self, texts, batch_size)[0]

    @classmethod
    def load(
        cls,
        model_dir: Path,
        max_length: int | None = None,
        precision: str = "fp32",
        runtime: str = "torch",
    ) -> Classifier:
        """:func:`load_classifier` with evaluation's argument order."""
        return load_classifier(model_dir, precision, max_length, runtime)


def container_cores() -> int:
    """CPU cores this process may use (cgroup/affinity aware), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def onnx_path(model_dir: str | Path, runtime: str) -> Path:
    """Where the exported graph of ``runtime`` sits in a Hugging Face folder."""
    return Path(model_dir) / ONNX_FOLDER / ONNX_FILES[runtime]


def token_window(tokenizer: Any, config: Any, max_length: int | None) -> int:
    """The token window: ``max_length`` if given, never beyond the position table, 512,
    or the window saved with the tokenizer (fine-tuning saves ``model.max_length`` there)."""
    limits = [POSITION_LIMIT, int(getattr(config, "max_position_embeddings", 0) or 512)]
    if tokenizer.model_max_length and tokenizer.model_max_length < 1_000_000:
        limits.append(int(tokenizer.model_max_length))
    return min(limits) if max_length is None else min([max_length, *limits])


def effective_precision(precision: str, runtime: str) -> Precision:
    """bf16 only where it pays: torch on a CPU with native bf16 (AVX512-BF16/AMX); an
    emulated bf16 is slower than fp32 for no gain, and exported graphs run fp32."""
    if precision != "bf16":
        return "fp32"
    from components import hardware

    if runtime != "torch":
        logger.warning("precision bf16 applies to the torch runtime; %s runs fp32", runtime)
        return "fp32"
    if not hardware.cpu_has_native_bf16():
        logger.warning("precision is bf16 but this CPU lacks bf16 support; using fp32")
        return "fp32"
    return "bf16"


def load_torch_model(model_dir: str | Path) -> Any:
    from transformers import AutoModelForSequenceClassification

    try:  # registers the mean-pooling classifier with the Auto classes
        import components.modeling  # noqa: F401
        from components.kernels.first_position import cut_last_layer
    except ImportError:  # outside Ratchet: the copy logged beside the model (code_paths)
        import modeling  # type: ignore[import-not-found]  # noqa: F401

        cut_last_layer = None  # type: ignore[assignment]
    model = AutoModelForSequenceClassification.from_pretrained(str(model_dir)).eval()
    if cut_last_layer is not None:
        cut_last_layer(model)  # a [CLS] head reads one position of the last layer only
    return model


def onnx_session(path: Path, threads: int | None = None) -> Any:
    """An ONNX Runtime CPU session on ``path`` with every graph optimisation enabled,
    ``threads`` intra-op threads (None: every core) and no inter-op parallelism.

    Raises:
        ServingError: the file is missing (the model was not exported for this runtime).
    """
    import onnxruntime as ort

    if not path.is_file():
        raise ServingError(
            f"{path} does not exist: export the model first "
            "(components.export.export_runtime, done by `ratchet build`)"
        )
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def load_classifier(
    model_dir: str | Path,
    precision: str = "fp32",
    max_length: int | None = None,
    runtime: str = "torch",
    threads: int | None = None,
) -> Classifier:
    """Load a fine-tuned sequence classifier and its fast tokenizer for inference.

    Args:
        model_dir: a ``save_pretrained`` folder with ``id2label`` in its config (and, for
            an exported runtime, its ``onnx/`` sub-folder).
        precision: ``bf16`` runs torch under CPU bf16 autocast where the CPU has native
            bf16; elsewhere, and for exported runtimes, fp32 with a warning.
        max_length: token window; default is the model's limit (see :func:`token_window`).
        runtime: ``torch``, ``onnx`` or ``onnx-int8``.
        threads: for ``onnx``, ONNX Runtime's intra-op threads (torch's are set by the
            caller); for ``onnx-int8``, how many single-text forward passes run side by
            side, each on one thread of one shared session (:data:`BATCH_DEPENDENT_RUNTIMES`
            score a text per pass, and a short text's pass gains little from a second
            intra-op thread while their idle threads spin: on 2 cores two passes side by
            side score about 1.8x the texts per second of one pass on 2 threads). None:
            every core.

    Raises:
        ServingError: an unknown runtime, or an exported runtime whose file is missing.
    """
    from transformers import AutoConfig, AutoTokenizer

    if runtime not in RUNTIMES:
        raise ServingError(f"unknown inference runtime {runtime!r}; choose one of {RUNTIMES}")
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir), use_fast=True)
    passes = None
    if runtime == "torch":
        model = load_torch_model(model_dir)
        config = model.config
    elif runtime in BATCH_DEPENDENT_RUNTIMES:
        model = onnx_session(onnx_path(model_dir, runtime), threads=1)
        config = AutoConfig.from_pretrained(str(model_dir))
        side_by_side = threads or container_cores()
        if side_by_side > 1:
            passes = ThreadPoolExecutor(side_by_side, thread_name_prefix="ratchet-pass")
    else:
        model = onnx_session(onnx_path(model_dir, runtime), threads)
        config = AutoConfig.from_pretrained(str(model_dir))
    labels = [config.id2label[index] for index in range(config.num_labels)]
    window = token_window(tokenizer, config, max_length)
    return Classifier(
        model,
        tokenizer,
        labels,
        window,
        effective_precision(precision, runtime),
        runtime,  # type: ignore[arg-type]
        passes,
    )


def length_sorted_chunks(lengths: Sequence[int], chunk_size: int) -> list[list[int]]:
    """Indices grouped into chunks of similar length (longest first), to limit padding."""
    order = sorted(range(len(lengths)), key=lambda index: -lengths[index])
    return [order[start : start + chunk_size] for start in range(0, len(order), chunk_size)]


def forward_logits(classifier: Classifier, encoded: Any) -> np.ndarray:
    """Logits (float64 numpy) of one tokenised chunk, by the classifier's runtime."""
    if classifier.runtime != "torch":
        wanted = {node.name for node in classifier.model.get_inputs()}
        feeds = {name: np.asarray(encoded[name], dtype=np.int64) for name in wanted}
        return np.asarray(classifier.model.run(["logits"], feeds)[0], dtype=np.float64)
    import torch

    tensors = {name: torch.from_numpy(np.asarray(value)) for name, value in encoded.items()}
    with (
        torch.inference_mode(),
        torch.autocast("cpu", dtype=torch.bfloat16, enabled=classifier.precision == "bf16"),
    ):
        return np.asarray(classifier.model(**tensors).logits.double().numpy())


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return np.asarray(shifted / shifted.sum(axis=-1, keepdims=True))


def score_chunk(classifier: Classifier, texts: list[str]) -> tuple[np.ndarray, list[bool]]:
    """Class probabilities (one row per text) and whether each text was truncated."""
    encoded = classifier.tokenizer(
        texts,
        padding=True,  # dynamic padding: to the longest text of this chunk only
        truncation=True,
        max_length=classifier.max_length,
        return_tensors="np",
    )
    # Fast tokenizers keep what truncation cut off; non-empty means the text was cut.
    truncated = [bool(encoding.overflowing) for encoding in encoded.encodings]
    return softmax(forward_logits(classifier, encoded)), truncated


def score_one_per_pass(classifier: Classifier, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Probabilities and truncation flags, each text alone in its forward pass.

    The texts are tokenised in one call (no padding: a text alone needs none, so its ids
    are those it would get alone); the passes run on ``classifier.passes`` side by side,
    ONNX Runtime releasing the GIL while it computes.
    """
    encoded = classifier.tokenizer(texts, truncation=True, max_length=classifier.max_length)
    truncated = np.array([bool(encoding.overflowing) for encoding in encoded.encodings])
    wanted = [node.name for node in classifier.model.get_inputs()]

    def logits_of(index: int) -> np.ndarray:
        feeds = {name: np.asarray([encoded[name][index]], dtype=np.int64) for name in wanted}
        return np.asarray(classifier.model.run(["logits"], feeds)[0][0])

    indices = range(len(texts))
    if classifier.passes is None or len(texts) == 1:
        rows = [logits_of(index) for index in indices]
    else:
        rows = list(classifier.passes.map(logits_of, indices))
    return softmax(np.asarray(rows, dtype=np.float64)), truncated


def predict_proba(
    classifier: Classifier, texts: Sequence[str], chunk_size: int = DEFAULT_CHUNK_SIZE
) -> tuple[np.ndarray, np.ndarray]:
    """Score texts in length-sorted chunks.

    Args:
        classifier: from :func:`load_classifier`.
        texts: any number of strings; each longer than the token window is truncated.
        chunk_size: texts per forward pass (ignored by :data:`BATCH_DEPENDENT_RUNTIMES`:
            one text per pass, see :func:`score_one_per_pass`).

    Returns:
        (probabilities of shape ``(len(texts), classes)``, truncated flags), in input order.
    """
    texts = [str(text) for text in texts]
    if classifier.runtime in BATCH_DEPENDENT_RUNTIMES and texts:
        return score_one_per_pass(classifier, texts)
    probabilities = np.zeros((len(texts), len(classifier.labels)), dtype=np.float64)
    truncated = np.zeros(len(texts), dtype=bool)
    for chunk in length_sorted_chunks([len(text) for text in texts], chunk_size):
        rows, cut = score_chunk(classifier, [texts[index] for index in chunk])
        probabilities[chunk] = rows
        truncated[chunk] = cut
    return probabilities, truncated


def score_texts(
    model_dir: Path,
    texts: Sequence[str],
    batch_size: int = 64,
    max_length: int | None = None,
    precision: str = "fp32",
    runtime: str = "torch",
) -> np.ndarray:
    """Class probabilities of ``model_dir`` for ``texts`` (used to re-score a champion).

    Args:
        max_length, precision, runtime: the model's own inference settings (``None``: the
            window recorded in its tokenizer folder).

    Returns:
        Array of shape ``(len(texts), classes)``; argmax gives the predicted class id.
    """
    classifier = load_classifier(model_dir, precision, max_length, runtime)
    return predict_proba(classifier, texts, batch_size)[0]
