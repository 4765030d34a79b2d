"""Export a fine-tuned classifier to ONNX for the ``onnx`` and ``onnx-int8`` runtimes.

:func:`export_runtime` writes ``onnx/model.onnx`` (and for int8 ``onnx/model-int8.onnx``)
into the Hugging Face folder, where :func:`components.inference.load_classifier` finds it:

1. ``torch.onnx.export`` with the TorchScript exporter (``dynamo=False``: the dynamo
   exporter needs ``onnxscript``) and dynamic batch and sequence axes, so one graph serves
   every chunk shape;
2. for ``onnx``: ONNX Runtime's offline graph optimisation (fused attention, GELU and
   layer norms), saved, so a server does not redo it at every start;
3. for ``onnx-int8``: ONNX Runtime dynamic quantisation of the plain graph (the quantiser
   cannot type the fused contrib ops), int8 weights per tensor or per channel, whichever
   agrees better with torch on the test texts (per channel on the SST-2 champion: 98.6%
   label agreement against 96.6%); activations are quantised on the fly and the
   session fuses the quantised graph when it loads it.
"""

from __future__ import annotations

import logging
import tempfile
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from components.errors import ServingError
from components.inference import (
    ONNX_FOLDER,
    RUNTIMES,
    load_classifier,
    load_torch_model,
    onnx_path,
    predict_proba,
)

logger = logging.getLogger(__name__)

OPSET = 17
INPUT_NAMES = ("input_ids", "attention_mask", "token_type_ids")
# Texts that pick between per-tensor and per-channel int8 weights when no test split is
# given; mixed lengths.
PROBE_TEXTS = [
    "a gripping, beautifully acted film",
    "a dull and lifeless script",
    "it is not a bad film , but it is far from a good one",
    "the best thing about this movie is its length : it ends",
    "an utterly charming , funny and touching story about growing up",
    "flat",
    "i have seen better , and i have seen much worse",
    "a triumph of style over substance that somehow still works",
]


def export_graph(model_dir: Path, target: Path) -> Path:
    """Trace the torch classifier to ONNX at ``target``, dynamic batch and sequence axes."""
    import torch
    from transformers import AutoTokenizer

    model = load_torch_model(model_dir)
    model.config.return_dict = False  # a tuple output traces to a plain ``logits`` output
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    sample = tokenizer(["a short text", "a longer text to trace with"], padding=True)
    names = [name for name in INPUT_NAMES if name in sample]
    tensors = tuple(torch.tensor(sample[name], dtype=torch.long) for name in names)
    axes = {name: {0: "batch", 1: "sequence"} for name in names}
    axes["logits"] = {0: "batch"}
    with torch.inference_mode(), warnings.catch_warnings():
        # The tracer warns that the encoder's mask padding and ``is_causal`` become
        # constants: both are fixed for a bidirectional encoder, whatever the shapes.
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        torch.onnx.export(
            model,
            tensors,
            str(target),
            input_names=names,
            output_names=["logits"],
            dynamic_axes=axes,
            opset_version=OPSET,
            dynamo=False,
        )
    return target


def optimize_graph(source: Path, target: Path) -> Path:
    """Save ONNX Runtime's optimised graph (fused attention, GELU, layer norms) at
    ``target``, so a server does not redo the fusion at every start."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    options.optimized_model_filepath = str(target)
    ort.InferenceSession(str(source), options, providers=["CPUExecutionProvider"])
    return target


def quantize_int8(source: Path, target: Path, per_channel: bool) -> Path:
    """Dynamic int8 quantisation of the plain (unfused) graph ``source``: int8 weights,
    activations quantised on the fly; ONNX Runtime fuses the result when it loads it."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(str(source), str(target), per_channel=per_channel, weight_type=QuantType.QInt8)
    return target


@dataclass(frozen=True)
class Probe:
    """Texts that choose between per-tensor and per-channel int8 weights (the test split,
    when the caller has it), and torch's probabilities on them when already known
    (evaluation's); label agreement with torch decides, the largest gap breaks a tie."""

    texts: Sequence[str] = tuple(PROBE_TEXTS)
    reference: np.ndarray | None = None


def export_int8(model_dir: Path, raw: Path, probe: Probe) -> bool:
    """Quantise per tensor and per channel; keep the one that agrees better with torch.

    Returns:
        Whether the kept int8 weights are per channel.
    """
    target = onnx_path(model_dir, "onnx-int8")
    texts = list(probe.texts)
    reference = probe.reference
    if reference is None:
        reference = predict_proba(load_classifier(model_dir), texts)[0]
    scores: dict[bool, tuple[float, float]] = {}
    for per_channel in (False, True):
        quantize_int8(raw, target, per_channel)
        scored = predict_proba(load_classifier(model_dir, runtime="onnx-int8"), texts)[0]
        agreement = float(np.mean(scored.argmax(axis=1) == reference.argmax(axis=1)))
        scores[per_channel] = (agreement, -float(np.max(np.abs(scored - reference))))
    per_channel = max(scores, key=lambda option: scores[option])
    if not per_channel:  # the graph last written is the per-channel one
        quantize_int8(raw, target, per_channel=False)
    logger.info(
        "int8 weights per %s (agreement, -max gap: %s)",
        "channel" if per_channel else "tensor",
        scores,
    )
    return per_channel


def export_runtime(model_dir: Path, runtime: str, probe: Probe | None = None) -> dict[str, Any]:
    """Write the graph ``runtime`` needs into ``model_dir/onnx/`` (nothing for torch).

    Args:
        model_dir: a Hugging Face classifier folder (written to).
        runtime: ``torch``, ``onnx`` or ``onnx-int8``.
        probe: what chooses between per-tensor and per-channel int8 weights.

    Returns:
        What was exported: ``files`` (paths relative to ``model_dir``) and, for int8,
        ``per_channel``.

    Raises:
        ServingError: an unknown runtime, or the export failed.
    """
    if runtime not in RUNTIMES:
        raise ServingError(f"unknown inference runtime {runtime!r}; choose one of {RUNTIMES}")
    if runtime == "torch":
        return {"files": []}
    target = onnx_path(model_dir, runtime)
    target.parent.mkdir(parents=True, exist_ok=True)
    exported: dict[str, Any] = {"files": [f"{ONNX_FOLDER}/{target.name}"]}
    try:
        with tempfile.TemporaryDirectory(prefix="ratchet-onnx-") as tmp:
            raw = export_graph(model_dir, Path(tmp) / "raw.onnx")
            if runtime == "onnx":
                optimize_graph(raw, target)
            else:
                exported["per_channel"] = export_int8(model_dir, raw, probe or Probe())
    except (RuntimeError, ValueError, OSError) as error:
        target.unlink(missing_ok=True)
        raise ServingError(f"exporting {model_dir} to {runtime} failed: {error}") from error
    return exported
