"""Side-by-side in-process speed and accuracy of the serving runtimes on one machine.

    .venv/bin/python benchmarks/runtimes.py --model .ratchet/artifacts/train-<hash>
    .venv/bin/python benchmarks/runtimes.py                # the shipped MiniLM, fresh head

Scores SST-2 dev sentences (``../shared/data/sst2/dev.tsv``) with torch fp32, ONNX Runtime
fp32 and ONNX Runtime int8 through ``components/inference.py`` — the code evaluation and
the Bento run — at ``max_length`` 64: length-sorted batches of 32, then one sentence at a
time. Prints sentences/s, the ratio to torch, and accuracy and label agreement with torch
(meaningful only for a model fine-tuned on SST-2; the shipped MiniLM has an untrained head,
its speed is the same). Not a test: figures depend on the machine and its load.
"""

from __future__ import annotations

import argparse
import csv
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

PROJECT_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT_ROOT))

SST2_DEV = PROJECT_ROOT.parent / "shared" / "data" / "sst2" / "dev.tsv"
RUNTIMES = ("torch", "onnx", "onnx-int8")


def read_dev(path: Path, limit: int | None) -> tuple[list[str], np.ndarray]:
    with path.open(encoding="utf-8", newline="") as handle:
        rows = list(csv.DictReader(handle, delimiter="\t", quoting=csv.QUOTE_NONE))
    rows = rows[:limit] if limit else rows
    return [row["sentence"].strip() for row in rows], np.array([int(r["label"]) for r in rows])


def demo_model(folder: Path) -> Path:
    """The shipped MiniLM with a fresh two-class head (speed only)."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from components.base_model import shipped_model_dir

    base = shipped_model_dir()
    labels = {0: "negative", 1: "positive"}
    model = AutoModelForSequenceClassification.from_pretrained(
        str(base), num_labels=2, id2label=labels
    )
    model.save_pretrained(folder)
    AutoTokenizer.from_pretrained(str(base)).save_pretrained(folder)
    return folder


def timed(classifier: object, texts: list[str], batch_size: int) -> tuple[np.ndarray, float]:
    """Probabilities and sentences/s (one warm-up chunk first)."""
    from components.inference import predict_proba

    predict_proba(classifier, texts[:batch_size], batch_size)  # type: ignore[arg-type]
    started = time.perf_counter()
    probabilities, _ = predict_proba(classifier, texts, batch_size)  # type: ignore[arg-type]
    return probabilities, len(texts) / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, help="a fine-tuned HF folder (default: MiniLM)")
    parser.add_argument("--max-length", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--limit", type=int, help="score only the first N dev sentences")
    parser.add_argument("--single", type=int, default=200, help="sentences timed one at a time")
    parser.add_argument("--threads", type=int, help="intra-op threads (default: all cores)")
    args = parser.parse_args()

    from components.export import Probe, export_runtime
    from components.inference import load_classifier
    from serving.predict import configure_threads

    threads = configure_threads(args.threads)
    texts, labels = read_dev(SST2_DEV, args.limit)
    with tempfile.TemporaryDirectory(prefix="ratchet-runtimes-") as tmp:
        folder = Path(tmp) / "model"
        if args.model:
            shutil.copytree(args.model, folder)
        else:
            demo_model(folder)
        results: dict[str, dict[str, float]] = {}
        reference = None
        for runtime in RUNTIMES:
            started = time.perf_counter()
            export_runtime(folder, runtime, Probe(texts))
            export_s = time.perf_counter() - started
            classifier = load_classifier(
                folder, max_length=args.max_length, runtime=runtime, threads=threads
            )
            probabilities, batched = timed(classifier, texts, args.batch_size)
            _, single = timed(classifier, texts[: args.single], 1)
            predicted = probabilities.argmax(axis=1)
            reference = predicted if reference is None else reference
            results[runtime] = {
                "batched": batched,
                "single": single,
                "accuracy": float(np.mean(predicted == labels)),
                "agreement": float(np.mean(predicted == reference)),
                "export_s": export_s,
            }
    print(f"{len(texts)} SST-2 dev sentences, max_length {args.max_length}, {threads} threads")
    print(
        f"{'runtime':10} {'batch ' + str(args.batch_size):>12} {'x torch':>8} "
        f"{'one at a time':>14} {'x torch':>8} {'accuracy':>9} {'agree':>7} {'export s':>9}"
    )
    torch_row = results["torch"]
    for runtime, row in results.items():
        print(
            f"{runtime:10} {row['batched']:12.1f} {row['batched'] / torch_row['batched']:8.2f} "
            f"{row['single']:14.1f} {row['single'] / torch_row['single']:8.2f} "
            f"{row['accuracy']:9.4f} {row['agreement']:7.4f} {row['export_s']:9.1f}"
        )


if __name__ == "__main__":
    main()
