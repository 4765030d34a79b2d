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


def average_tensors(tensors: Sequence[torch.Tensor], name: str) -> torch.Tensor:
    """The mean of floating-point tensors (summed in fp32), or the shared value of integer
    buffers such as position ids, which must agree."""
    first = tensors[0]
    if any(tensor.shape != first.shape for tensor in tensors):
        raise TrainingError(f"cannot average {name}: shapes {[tuple(t.shape) for t in tensors]}")
    if not first.is_floating_point():
        if any(not torch.equal(tensor, first) for tensor in tensors[1:]):
            raise TrainingError(f"cannot average {name}: its non-float values differ")
        return first
    total = torch.zeros_like(first, dtype=torch.float32)
    for tensor in tensors:
        total += tensor.float()
    return (total / len(tensors)).to(first.dtype)


def average_model_folders(member_dirs: Sequence[Path], output_dir: Path) -> Path:
    """Write the uniform average of ``member_dirs``' weights as a Hugging Face folder.

    The config and tokenizer are the first member's (they are the same in all). The
    folder is assembled beside ``output_dir`` and swapped into place, so a crash leaves
    either the old folder or the whole new one.

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
            states = [load_file(member / file_name) for member in member_dirs]
            keys = set(states[0])
            if any(set(state) != keys for state in states[1:]):
                raise TrainingError(f"cannot average {file_name}: the weight names differ")
            averaged = {key: average_tensors([s[key] for s in states], key) for key in keys}
            # Hugging Face loaders expect the "format" metadata that save_pretrained writes.
            save_file(averaged, partial / file_name, metadata={"format": "pt"})
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    if output_dir.exists():
        shutil.rmtree(output_dir)
    os.replace(partial, output_dir)
    return output_dir
