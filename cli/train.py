"""`ratchet` commands for training; also the `cmd`s of the dvc.yaml stages pretrain and train.

ratchet pretrain                       # data/prepared (+ corpora) -> models/pretrained
ratchet train                          # models/pretrained -> models/finetuned
ratchet train --set train.max_steps=50 # any key of params.yaml can be overridden
torchrun --nproc_per_node 2 -m cli train   # DDP: gloo on CPU, NCCL on GPUs

Both first run the preflight checks (components/preflight.py: prepared data, behaviour
suite vs labels, base model vs task) and stop before any training when one fails. Both
resume from their last checkpoint (in the state folder) when a previous run of the
same configuration on the same data was interrupted.
"""

from __future__ import annotations

from typing import Annotated

import typer

from cli.options import command, console, load
from components.preflight import preflight

InitOption = Annotated[
    str | None,
    typer.Option(
        "--init", help="Model folder to fine-tune; default models/pretrained, else model.base."
    ),
]

commands = typer.Typer()
GROUPS = {None: commands}


def print_notices(notices: list[str]) -> None:
    """The preflight's notices (which behaviour suite will run, or why none)."""
    for notice in notices:
        console.print(notice, highlight=False)


@command(commands, "pretrain")
def pretrain(ctx: typer.Context) -> None:
    """MLM-pretrain model.base on the training texts (+ pretrain.extra_corpora); writes
    models/pretrained and metrics/pretrain.json. With pretrain.enabled false, copies the base."""
    from components.base_model import resolve_base_model
    from components.pretrain import run_pretrain_stage

    settings, paths = load(ctx)
    base = resolve_base_model(settings.model.base, paths.project_root)
    print_notices(preflight(settings, paths, base))
    result = run_pretrain_stage(settings, paths)
    summary = "base copied (pretrain.enabled is false)"
    if "perplexity_after" in result.metrics:
        summary = (
            f"validation perplexity {result.metrics['perplexity_before']:.2f} -> "
            f"{result.metrics['perplexity_after']:.2f}"
        )
    console.print(f"{result.model_dir}: {summary}", highlight=False)


@command(commands, "train")
def train(ctx: typer.Context, init: InitOption = None) -> None:
    """Fine-tune a sequence classifier (a token classifier with data.task
    token-classification) on data/prepared; writes models/finetuned and metrics/train.json."""
    from components.finetune import default_init_model, run_train_stage

    settings, paths = load(ctx)
    start = init or default_init_model(settings, paths)
    named = "--init" if init else "model.base"
    if not init and start == str(paths.pretrained_dir):
        named = f"{paths.pretrained_dir} (the pretrain stage's output)"
    print_notices(preflight(settings, paths, start, stages=("train",), model_setting=named))
    result = run_train_stage(settings, paths, start)
    metrics = result.metrics
    entity_f1 = metrics.get("val_entity_f1")
    score = f"entity F1 {entity_f1:.4f}, " if entity_f1 is not None else ""
    console.print(
        f"{result.model_dir}: validation {score}accuracy {metrics['val_accuracy']:.4f} after "
        f"{metrics['steps']:.0f} steps, {metrics['train_samples_per_second']:.1f} samples/s "
        f"({result.info['device']}, {result.info['precision']})",
        highlight=False,
    )
