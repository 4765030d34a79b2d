"""Token-classification (NER) training throughput: Ratchet's loop against a plain Trainer.

    .venv/bin/python benchmarks/token_throughput.py                    # 4,000 sentences, 3 rounds
    .venv/bin/python benchmarks/token_throughput.py --rows 2000 --rounds 2 --precision fp32

Same model (the shipped MiniLM, uncased), same CoNLL-2003 training slice, same batch size,
same number of optimiser steps, same optimiser settings and the same precision, in one
invocation:

* a plain Hugging Face ``Trainer``: ``AutoModelForTokenClassification``, words tokenised with
  ``is_split_into_words`` and each word's tag on its first sub-token (the rest -100),
  ``DataCollatorForTokenClassification`` (dynamic padding), and
  ``train_sampling_strategy="group_by_length"`` (transformers 5's name for length grouping);
* Ratchet's ``run_finetuning`` with ``data.task: token-classification`` (the loop the
  ``train`` stage runs), bare: no Prefect, no MLflow, no checkpoints.

Rounds alternate which side runs first, and the ratio is the median of the per-round ratios:
the machine's speed drifts over minutes (and other processes share it), and a ratio of two
runs far apart in time measures the drift. Prints sentences/s of each side per round, the
median ratio, and the entity micro-F1 (seqeval, strict IOB2) of both models on the first
``--dev-rows`` CoNLL validation sentences, scored by the same code. A benchmark, not a test.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

PROJECT_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT_ROOT))

from benchmarks._throughput_baselines import (  # noqa: E402
    SEED,
    require_accelerate,
    trainer_arguments,
)
from benchmarks._throughput_ratchet import ratchet_config  # noqa: E402
from components.base_model import shipped_model_dir  # noqa: E402
from components.finetune import run_finetuning  # noqa: E402
from components.hardware import cpu_has_native_bf16  # noqa: E402
from components.logs import setup_logging  # noqa: E402
from components.prepare import PreparedData  # noqa: E402
from components.state import QUIET_ENVIRONMENT  # noqa: E402
from components.token_data import infer_tag_set, read_token_file  # noqa: E402
from components.token_finetune import (  # noqa: E402
    IGNORED,
    encode_words,
    entity_scores,
    predict_word_tags,
)
from components.token_prepare import encode_tags  # noqa: E402

CONLL = PROJECT_ROOT.parent / "shared" / "data" / "conll2003"


def parse_arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=4000, help="CoNLL training sentences")
    parser.add_argument("--dev-rows", type=int, default=1000, help="validation sentences scored")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=None, help="default: one epoch")
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds")
    parser.add_argument(
        "--precision",
        choices=["bf16", "fp32"],
        default=None,
        help="both sides; default bf16 where the CPU (or GPU) has it natively, else fp32",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch threads for both sides (default torch's); on a machine shared with "
        "other work, 1 thread per process avoids threads waiting on descheduled peers",
    )
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra params.yaml override for Ratchet's side (e.g. train.cpu_speedups=false)",
    )
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    return parser.parse_args()


def load_conll(rows: int, dev_rows: int) -> PreparedData:
    """A seeded slice of CoNLL-2003 train and the first ``dev_rows`` validation sentences,
    tags encoded over the training file's tag set (the prepared-data shape)."""
    train_raw = read_token_file(CONLL / "train.txt")
    dev_raw = read_token_file(CONLL / "valid.txt", max_rows=dev_rows)
    tags = infer_tag_set(train_raw["tags"])
    train = encode_tags(train_raw, tags, deduplicate=False)
    train = train.sample(n=min(rows, len(train)), random_state=SEED).reset_index(drop=True)
    dev = encode_tags(dev_raw, tags, deduplicate=False)
    return PreparedData(train=train, validation=dev, test=dev, labels=tags)


def run_trainer(
    data: PreparedData, steps: int, batch_size: int, max_length: int, bf16: bool
) -> tuple[float, torch.nn.Module]:
    """A plain Trainer run: first-sub-token labels, DataCollatorForTokenClassification,
    length-grouped sampling. Returns (sentences/s, the trained model)."""
    from transformers import (
        AutoModelForTokenClassification,
        AutoTokenizer,
        DataCollatorForTokenClassification,
        Trainer,
    )

    base = str(shipped_model_dir())
    tokenizer = AutoTokenizer.from_pretrained(base)
    words = encode_words(
        tokenizer, data.train["tokens"].tolist(), data.train["tag_ids"].tolist(), max_length
    )
    dataset = [
        {"input_ids": ids, "attention_mask": [1] * len(ids), "labels": labels}
        for ids, labels in zip(words.input_ids, words.labels, strict=True)
    ]
    torch.manual_seed(SEED)
    model = AutoModelForTokenClassification.from_pretrained(
        base,
        num_labels=len(data.labels),
        id2label=dict(enumerate(data.labels)),
        label2id={name: index for index, name in enumerate(data.labels)},
    )
    arguments = trainer_arguments("token-trainer", steps, batch_size, bf16, "group_by_length")
    trainer = Trainer(
        model=model,
        args=arguments,
        train_dataset=dataset,  # type: ignore[arg-type]
        data_collator=DataCollatorForTokenClassification(tokenizer, label_pad_token_id=IGNORED),
        processing_class=tokenizer,
    )
    output = trainer.train()
    assert trainer.model is not None
    return float(output.metrics["train_samples_per_second"]), trainer.model


def run_ratchet(
    data: PreparedData,
    steps: int,
    batch_size: int,
    max_length: int,
    precision: str,
    overrides: list[str],
) -> tuple[float, Path]:
    """Ratchet's token fine-tuning (``run_finetuning``), bare. Returns (sentences/s of the
    loop, in-loop orchestration included and evaluation excluded, as the Trainer's
    ``train_samples_per_second``; the saved model folder)."""
    workdir = Path(tempfile.mkdtemp(prefix="bench-token-ratchet-"))
    config = ratchet_config(
        steps,
        batch_size,
        max_length,
        steps,  # no checkpoint folder is given: nothing is written
        (
            "data.task=token-classification",
            "data.labels=null",
            "gate.metric=entity_f1",
            f"train.precision={precision}",
            "train.max_eval_samples=100",  # scored once at the end, outside the timing
            "train.keep=last",
            *overrides,
        ),
    )
    result = run_finetuning(config, data, str(shipped_model_dir()), workdir / "model")
    metrics = result.metrics
    rate = metrics["samples_seen"] / (metrics["train_seconds"] + metrics["orchestration_seconds"])
    return rate, workdir / "model"


def dev_entity_f1(model: torch.nn.Module, data: PreparedData, max_length: int) -> float:
    """Entity micro-F1 of ``model`` on the validation slice (fp32, same code for both)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(shipped_model_dir()))
    dev = data.validation
    words = encode_words(tokenizer, dev["tokens"].tolist(), None, max_length)
    predicted, _ = predict_word_tags(
        model.float().to("cpu"), words, [len(t) for t in dev["tokens"]], 64, tokenizer.pad_token_id
    )
    names = [[data.labels[i] for i in ids] for ids in predicted]
    return entity_scores(dev["tags"].tolist(), names)["entity_f1"]


def run_rounds(args: argparse.Namespace, data: PreparedData, steps: int, precision: str) -> dict:
    """``--rounds`` rounds of both sides, alternating which runs first."""
    from transformers import AutoModelForTokenClassification

    trainer_rates: list[float] = []
    ratchet_rates: list[float] = []
    f1: dict[str, float] = {}
    for index in range(args.rounds):
        order = ("trainer", "ratchet") if index % 2 == 0 else ("ratchet", "trainer")
        for side in order:
            start = time.perf_counter()
            if side == "trainer":
                rate, model = run_trainer(
                    data, steps, args.batch_size, args.max_length, precision == "bf16"
                )
                trainer_rates.append(rate)
            else:
                rate, folder = run_ratchet(
                    data, steps, args.batch_size, args.max_length, precision, args.overrides
                )
                ratchet_rates.append(rate)
                model = AutoModelForTokenClassification.from_pretrained(folder)
            if index == 0:
                f1[side] = dev_entity_f1(model, data, args.max_length)
            print(
                f"round {index + 1} {side}: {rate:.1f} sentences/s "
                f"({time.perf_counter() - start:.0f} s wall)",
                flush=True,
            )
    ratios = [ours / theirs for ours, theirs in zip(ratchet_rates, trainer_rates, strict=True)]
    return {
        "trainer_sentences_per_second": trainer_rates,
        "ratchet_sentences_per_second": ratchet_rates,
        "ratio_each_round": ratios,
        "ratio": statistics.median(ratios),
        "trainer_median": statistics.median(trainer_rates),
        "ratchet_median": statistics.median(ratchet_rates),
        "trainer_dev_entity_f1": f1["trainer"],
        "ratchet_dev_entity_f1": f1["ratchet"],
    }


def mean_tokens(data: PreparedData, max_length: int) -> float:
    """Mean sub-tokens per training sentence (special tokens included)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(shipped_model_dir()))
    words = encode_words(tokenizer, data.train["tokens"].tolist(), None, max_length)
    return sum(len(ids) for ids in words.input_ids) / len(words.input_ids)


def main() -> None:
    args = parse_arguments()
    require_accelerate()
    setup_logging(logging.WARNING)
    os.environ.setdefault("RATCHET_NO_PROGRESS", "1")
    for name, value in QUIET_ENVIRONMENT.items():
        os.environ.setdefault(name, value)
    if args.threads:
        torch.set_num_threads(args.threads)
        args.overrides = [f"train.num_threads={args.threads}", *args.overrides]
    native = torch.cuda.is_available() or cpu_has_native_bf16()
    precision = args.precision or ("bf16" if native else "fp32")
    data = load_conll(args.rows, args.dev_rows)
    steps = args.steps or len(data.train) // args.batch_size
    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"torch {torch.__version__}, threads {torch.get_num_threads()}, native bf16 "
        f"{cpu_has_native_bf16()}, cuda {torch.cuda.is_available()}, precision {precision}"
    )
    print(
        f"data: {len(data.train)} CoNLL-2003 train sentences "
        f"({mean_tokens(data, args.max_length):.1f} sub-tokens each), batch {args.batch_size}, "
        f"{steps} steps, {args.rounds} rounds; dev F1 on {len(data.validation)} sentences",
        flush=True,
    )
    figures = {"steps": steps, "rows": len(data.train), "precision": precision}
    figures |= run_rounds(args, data, steps, precision)
    print(json.dumps(figures, indent=2))
    print(
        f"\nsentences/s  Trainer {figures['trainer_median']:.1f}   "
        f"Ratchet {figures['ratchet_median']:.1f}   (medians of {args.rounds} rounds)\n"
        f"ratio        {figures['ratio']:.2f}x (rounds: "
        f"{', '.join(f'{r:.2f}x' for r in figures['ratio_each_round'])})\n"
        f"dev F1       Trainer {figures['trainer_dev_entity_f1']:.4f}   "
        f"Ratchet {figures['ratchet_dev_entity_f1']:.4f} (round 1, same steps)"
    )
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
