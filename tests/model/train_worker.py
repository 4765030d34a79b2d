"""Fine-tunes the tiny BERT on the separable data set in a subprocess, for the tests that
kill a run (SIGKILL) or launch it under ``torchrun``.

    python tests/model/train_worker.py TINY_BERT OUT_DIR CHECKPOINT_DIR [--kill-at STEP]
        [--set key=value ...]

Each rank also saves its final weights to ``OUT_DIR/weights-rank<R>.pt``.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from components import finetune, finetune_run  # noqa: E402
from components.config import load_config  # noqa: E402
from components.prepare import PreparedData  # noqa: E402
from tests.conftest import PROJECT_ROOT, make_sentiment_rows  # noqa: E402

LABELS = ["negative", "positive"]


def sentiment_split(count: int, seed: int) -> object:
    rows = make_sentiment_rows(count, seed).rename(columns={"sentence": "text"})
    rows["label_name"] = [LABELS[label] for label in rows["label"]]
    return rows


def sentiment_data(train_rows: int = 160) -> PreparedData:
    return PreparedData(
        train=sentiment_split(train_rows, 0),  # type: ignore[arg-type]
        validation=sentiment_split(40, 1),  # type: ignore[arg-type]
        test=sentiment_split(40, 2),  # type: ignore[arg-type]
        labels=LABELS,
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("tiny_bert")
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("checkpoint_dir", type=Path)
    parser.add_argument("--kill-at", type=int, default=None)
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    args = parser.parse_args()
    config = load_config(
        PROJECT_ROOT / "params.yaml",
        [PROJECT_ROOT / "configs" / "smoke.yaml"],
        [f"model.base={args.tiny_bert}", *args.overrides],
    )
    rank = int(os.environ.get("RANK", "0"))
    original_loop = finetune_run.run_loop

    def loop_saving_weights(model: torch.nn.Module, *rest: object, **options: object) -> object:
        outcome = original_loop(model, *rest, **options)  # type: ignore[arg-type]
        args.out_dir.mkdir(parents=True, exist_ok=True)
        torch.save(model.state_dict(), args.out_dir / f"weights-rank{rank}.pt")
        return outcome

    finetune_run.run_loop = loop_saving_weights  # type: ignore[assignment]

    def maybe_kill(step: int, metrics: dict[str, float]) -> None:
        if step != args.kill_at:
            return
        # Checkpoints land on a background thread. Wait (bounded) for the last one submitted
        # before this step, so the test knows which checkpoint the resumed run starts from;
        # the loop submits step N's checkpoint after this callback, hence step - 1.
        every = config.train.checkpoint_every_steps
        if every and step > every:
            last = args.checkpoint_dir / f"step-{(step - 1) // every * every:08d}"
            deadline = time.monotonic() + 60
            while not last.is_dir() and time.monotonic() < deadline:
                time.sleep(0.01)
        os.kill(os.getpid(), signal.SIGKILL)

    result = finetune.run_finetuning(
        config,
        sentiment_data(),
        args.tiny_bert,
        args.out_dir / "model",
        args.checkpoint_dir,
        maybe_kill,
    )
    (args.out_dir / f"metrics-rank{rank}.json").write_text(json.dumps(result.metrics))


if __name__ == "__main__":
    main()
