"""The Hugging Face Trainer baselines of ``benchmarks/train_throughput.py`` and what the
benchmark shares with them: the SST-2 slice, the optimiser settings, the FLOP counts.

Not a product module: ``accelerate`` (which the Trainer needs) is an optional extra.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from components.base_model import shipped_model_dir
from components.hardware import cpu_has_native_bf16
from components.logs import progress_disabled

PROJECT_ROOT = Path(__file__).resolve().parents[1]
SST2 = PROJECT_ROOT.parent / "shared" / "data" / "sst2"
LABELS = ["negative", "positive"]
LR, WEIGHT_DECAY, WARMUP_FRACTION, SEED = 5e-5, 0.01, 0.06, 42


def load_sst2(rows: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """A seeded slice of SST-2 train and the full dev set, as prepared-data frames."""
    train = pd.read_csv(SST2 / "train.tsv", sep="\t", quoting=3)
    dev = pd.read_csv(SST2 / "dev.tsv", sep="\t", quoting=3)
    frames = []
    for frame in (train.sample(n=rows, random_state=SEED), dev):
        frame = frame.rename(columns={"sentence": "text"}).reset_index(drop=True)
        frame["text"] = frame["text"].str.strip()
        frame["label_name"] = [LABELS[label] for label in frame["label"]]
        frames.append(frame)
    return frames[0], frames[1]


def matmul_peak_flops(dtype: torch.dtype, size: int = 1536, seconds: float = 2.0) -> float:
    """Measured dense matmul FLOP/s for ``dtype`` on this machine."""
    left, right = torch.randn(size, size, dtype=dtype), torch.randn(size, size, dtype=dtype)
    left @ right
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        left @ right
        count += 1
    return 2 * size**3 * count / (time.perf_counter() - start)


def training_flops_per_token(config: Any, sequence_length: float) -> float:
    """fwd+bwd FLOPs per processed token: 6 x non-embedding weights + attention scores."""
    hidden, layers = config.hidden_size, config.num_hidden_layers
    weights = layers * (4 * hidden * hidden + 2 * hidden * config.intermediate_size)
    weights += hidden * hidden  # pooler
    return 6 * weights + 12 * layers * sequence_length * hidden


def require_accelerate() -> None:
    """The Trainer baselines need ``accelerate``, an optional extra (Ratchet's own loop
    does not): stop with the install command before any run starts."""
    try:
        import accelerate  # noqa: F401
    except ImportError:
        sys.exit(
            "benchmarks/train_throughput.py: the Hugging Face Trainer baselines need "
            "accelerate, which Ratchet itself does not; install the benchmark extra:\n"
            "    .venv/bin/pip install --constraint constraints.txt --editable '.[bench]'"
        )


def trainer_arguments(name: str, steps: int, batch_size: int, bf16: bool, sampling: str) -> Any:
    """The ``TrainingArguments`` every Trainer baseline shares: the benchmark's optimiser
    settings, no checkpoints, no reporting; ``sampling`` is ``train_sampling_strategy``
    (``group_by_length`` is transformers 5's length grouping)."""
    from transformers import TrainingArguments

    return TrainingArguments(
        output_dir=tempfile.mkdtemp(prefix=f"bench-{name}-"),
        per_device_train_batch_size=batch_size,
        max_steps=steps,
        learning_rate=LR,
        weight_decay=WEIGHT_DECAY,
        warmup_steps=int(WARMUP_FRACTION * steps),
        max_grad_norm=1.0,
        lr_scheduler_type="linear",
        seed=SEED,
        bf16=bf16,
        use_cpu=not torch.cuda.is_available(),  # the Trainer refuses CPU bf16 without it
        train_sampling_strategy=sampling,
        save_strategy="no",
        report_to="none",
        logging_steps=max(steps, 1),
        disable_tqdm=progress_disabled(),
        dataloader_pin_memory=False,
    )


def run_trainer_baseline(
    name: str, train: pd.DataFrame, steps: int, batch_size: int, max_length: int, padded: bool
) -> dict[str, Any]:
    """A plain Trainer run; (a) pads to max_length, (b) pads dynamically, length-grouped."""
    from transformers import (
        AutoModelForSequenceClassification,
        AutoTokenizer,
        DataCollatorWithPadding,
        Trainer,
        default_data_collator,
    )

    base = str(shipped_model_dir())
    tokenizer = AutoTokenizer.from_pretrained(base)
    encoded = tokenizer(
        train["text"].tolist(),
        truncation=True,
        max_length=max_length,
        padding="max_length" if padded else False,
    )
    dataset = [
        {**{key: encoded[key][i] for key in encoded}, "labels": int(label)}
        for i, label in enumerate(train["label"])
    ]
    torch.manual_seed(SEED)
    model = AutoModelForSequenceClassification.from_pretrained(base, num_labels=2)
    bf16 = (not padded) and (torch.cuda.is_available() or cpu_has_native_bf16())
    arguments = trainer_arguments(
        name, steps, batch_size, bf16, "random" if padded else "group_by_length"
    )
    trainer = Trainer(
        model=model,
        args=arguments,
        train_dataset=dataset,  # type: ignore[arg-type]
        data_collator=default_data_collator if padded else DataCollatorWithPadding(tokenizer),
        processing_class=tokenizer,
    )
    cpu_start = time.process_time()
    output = trainer.train()
    cpu_seconds = time.process_time() - cpu_start
    lengths = [len(ids) for ids in encoded["input_ids"]]
    return {
        "name": name,
        "samples_per_second": output.metrics["train_samples_per_second"],
        "train_seconds": output.metrics["train_runtime"],
        "samples_per_cpu_second": steps * batch_size / cpu_seconds,
        "model": trainer.model,
        "bf16": bf16,
        "mean_padded_length": float(max_length) if padded else None,
        "mean_length": sum(lengths) / len(lengths),
    }
