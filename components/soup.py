"""Average the weights of fine-tuned models that share a start: a uniform "model soup".

Fine-tunes of one pretrained model that differ only in their seed end in the same basin
of the loss, so the mean of their weights is itself a good model, and often better than
each of them (Wortsman et al., 2022, "Model soups"). Unlike an ensemble, the soup costs
the same to serve as one model.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Sequence
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from components.errors import TrainingError

WEIGHT_SUFFIX = ".safetensors"


def weight_files(model_dir: Path) -> list[str]:
    """Names of the safetensors files of a Hugging Face folder (one, or the shards)."""
    names = sorted(path.name for path in model_dir.glob(f"*{WEIGHT_SUFFIX}"))
    if not names:
        raise TrainingError(f"{model_dir} holds no {WEIGHT_SUFFIX} weights to average")
    return names


def check_soup_members(member_dirs: Sequence[Path]) -> list[str]:
    """The weight file names the members share.

    Raises:
        TrainingError: fewer than two members, or members whose configs (architecture,
            labels, sizes) or weight files differ: their weights do not line up.
    """
    if len(member_dirs) < 2:
        raise TrainingError(f"a soup needs at least two models, got {len(member_dirs)}")
    first = member_dirs[0]
    first_config = json.loads((first / "config.json").read_text())
    names = weight_files(first)
    for other in member_dirs[1:]:
        config = json.loads((other / "config.json").read_text())
        differing = sorted(
            key
            for key in first_config.keys() | config.keys()
            if first_config.get(key) != config.get(key)
        )
        if differing:
            raise TrainingError(
                f"cannot average {other} with {first}: their configs differ in {differing}"
            )
        if weight_files(other) != names:
            raise TrainingError(f"cannot average {other} with {first}: different weight files")
    return names


def add_member_weights(
    totals: dict[str, torch.Tensor], first: dict[str, torch.Tensor], member: dict[str, torch.Tensor]
) -> None:
    """Add one member's floating-point weights into the fp32 ``totals``; integer buffers
    such as position ids must equal the first member's."""
    if set(member) != set(first):
        raise TrainingError(
            f"cannot average: weight names differ ({sorted(set(member) ^ set(first))[:5]})"
        )
    for name, value in member.items():
        reference = first[name]
        if value.shape != reference.shape:
            raise TrainingError(
                f"cannot average {name}: shapes {tuple(reference.shape)} and {tuple(value.shape)}"
            )
        if reference.is_floating_point():
            totals[name] += value.float()
        elif not torch.equal(value, reference):
            raise TrainingError(f"cannot average {name}: its non-float values differ")


def average_model_folders(member_dirs: Sequence[Path], output_dir: Path) -> Path:
    """Write the uniform average of ``member_dirs``' weights as a Hugging Face folder.

    The config and tokenizer are the first member's (they are the same in all). Weights
    are summed in fp32 one member at a time, so memory holds two models, not all of them.
    The folder is assembled beside ``output_dir`` and renamed into place, so a crash
    leaves the previous folder (or, in the instant between the two, none), never a
    half-written one.

    Raises:
        TrainingError: the members cannot be averaged (see :func:`check_soup_members`).
    """
    names = check_soup_members(member_dirs)
    output_dir.parent.mkdir(parents=True, exist_ok=True)
    partial = output_dir.parent / f".{output_dir.name}.tmp-{os.getpid()}"
    shutil.rmtree(partial, ignore_errors=True)
    shutil.copytree(member_dirs[0], partial, ignore=shutil.ignore_patterns(f"*{WEIGHT_SUFFIX}"))
    try:
        for file_name in names:
            first = load_file(member_dirs[0] / file_name)
            totals = {
                name: value.to(torch.float32, copy=True)
                for name, value in first.items()
                if value.is_floating_point()
            }
            for member in member_dirs[1:]:
                add_member_weights(totals, first, load_file(member / file_name))
            averaged = {
                name: (totals[name] / len(member_dirs)).to(value.dtype)
                if value.is_floating_point()
                else value
                for name, value in first.items()
            }
            # Hugging Face loaders expect the "format" metadata that save_pretrained writes.
            save_file(averaged, partial / file_name, metadata={"format": "pt"})
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    if output_dir.exists():
        shutil.rmtree(output_dir)
    os.replace(partial, output_dir)
    return output_dir
