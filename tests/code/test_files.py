"""Atomic writes: a failure or a kill leaves the old version or the new, never half, and
no temporary sibling behind."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from components.files import (
    atomic_dir,
    save_pretrained_atomically,
    write_atomically,
    write_metrics,
)
from components.training.checkpoints import (
    TrainState,
    clear_checkpoints,
    list_checkpoints,
    save_checkpoint,
)
from components.training.optimization import linear_schedule
from components.training.runtime import capture_rng_state


def test_write_atomically_replaces_the_file_and_leaves_nothing_else(tmp_path: Path) -> None:
    target = tmp_path / "deep" / "run_key.txt"
    write_atomically(target, "old")
    write_atomically(target, b"new")
    assert target.read_text() == "new"
    assert [p.name for p in target.parent.iterdir()] == ["run_key.txt"]


def test_a_failed_folder_write_keeps_the_old_folder_and_no_partial(tmp_path: Path) -> None:
    target = tmp_path / "model"
    with atomic_dir(target) as folder:
        (folder / "weights").write_text("v1")
    with pytest.raises(RuntimeError, match="disk full"), atomic_dir(target) as folder:
        (folder / "weights").write_text("half of v2")
        raise RuntimeError("disk full")
    assert (target / "weights").read_text() == "v1"
    assert [p.name for p in tmp_path.iterdir()] == ["model"]


class SavesHalfThenFails:
    """A model whose ``save_pretrained`` writes a file and then fails (a full disk)."""

    def save_pretrained(self, folder: Path, **options: object) -> None:
        (Path(folder) / "model.safetensors").write_bytes(b"half")
        raise OSError("No space left on device")


def test_a_failed_model_save_keeps_the_previous_model(tmp_path: Path) -> None:
    output = tmp_path / "finetuned"
    output.mkdir()
    (output / "model.safetensors").write_bytes(b"previous")
    with pytest.raises(OSError, match="No space left"):
        save_pretrained_atomically(SavesHalfThenFails(), None, output)
    assert (output / "model.safetensors").read_bytes() == b"previous"
    assert [p.name for p in tmp_path.iterdir()] == ["finetuned"]


def test_metrics_are_rounded_with_their_info(tmp_path: Path) -> None:
    path = tmp_path / "metrics" / "train.json"
    write_metrics(path, {"val_accuracy": 0.123456789}, {"device": "cpu"})
    assert path.read_text() == (
        '{\n  "info": {\n    "device": "cpu"\n  },\n  "val_accuracy": 0.123457\n}\n'
    )


def test_clearing_checkpoints_removes_the_partial_of_a_killed_write(tmp_path: Path) -> None:
    model = torch.nn.Linear(2, 2)
    optimizer = torch.optim.AdamW(model.parameters())
    scheduler = linear_schedule(optimizer, 0, 4)
    save_checkpoint(
        tmp_path, model, optimizer, scheduler, TrainState(step=2), [capture_rng_state()]
    )
    (tmp_path / ".step-00000004.tmp-123").mkdir()  # a write killed before its rename
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step-00000002"]
    clear_checkpoints(tmp_path)
    assert list(tmp_path.iterdir()) == []
