"""Which run a checkpoint folder belongs to: resume keys recorded beside the checkpoints.

A changed setting, data set or init model starts fresh instead of resuming a different
run; a crashed run still resumes after only its checkpoint cadence changed.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from components.errors import TrainingError
from components.files import write_atomically
from components.training.runtime import is_main_process

# When checkpoints are written does not change what a run computes: a crashed run still
# resumes after these were changed (say, to checkpoint less often).
CADENCE_KEYS = ("checkpoint_every_steps", "checkpoint_every_minutes")


RUN_KEY_FILE = "run_key.txt"


def run_key(config: Any, paths: Any, *fingerprints: str) -> str:
    """Checkpoint folder key: the config sections and prepared data a run depends on,
    plus ``fingerprints`` of its other inputs (the init model's, the corpora's).
    A changed setting, data set or init model starts fresh instead of resuming a
    different run."""
    manifest = paths.prepared_dir / "manifest.json"
    data_stamp = hashlib.sha256(manifest.read_bytes() if manifest.is_file() else b"")
    return resume_key(config, data_stamp.hexdigest(), *fingerprints)[:12]


def resume_key(config: Any, *fingerprints: str) -> str:
    """What a run computes from: the config sections training reads (less checkpoint
    cadence) and content fingerprints of its data and init model. Recorded in the
    checkpoint folder, so a resume can check it continues the same run."""
    sections = config.section_hash(
        "data", "model", "pretrain", "train", leave_out={"train": CADENCE_KEYS}
    )
    digest = hashlib.sha256(sections.encode())
    for fingerprint in fingerprints:
        digest.update(b"\x00" + fingerprint.encode())
    return digest.hexdigest()[:16]


def claim_checkpoint_dir(checkpoint_dir: Path | None, key: str) -> None:
    """Make sure ``checkpoint_dir`` resumes only the run whose :func:`resume_key` is ``key``.

    A new or empty folder records ``key``; a folder holding progress (checkpoints, a
    recorded precision, a soup's members) must record the same key.

    Raises:
        TrainingError: the folder holds progress of another run, or progress that
            records no key; it names both keys and the folder to delete.
    """
    if checkpoint_dir is None:
        return
    recorded_file = checkpoint_dir / RUN_KEY_FILE
    recorded = recorded_file.read_text().strip() if recorded_file.is_file() else None
    progress = (
        [entry for entry in checkpoint_dir.iterdir() if entry.name != RUN_KEY_FILE]
        if checkpoint_dir.is_dir()
        else []
    )
    if progress and recorded != key:
        raise TrainingError(
            f"the checkpoints in {checkpoint_dir} were written by another run (its key is "
            f"{recorded or 'not recorded'}, this run's is {key}: different data, settings "
            f"or init model); resuming them would train the wrong model. Delete "
            f"{checkpoint_dir} to start this run from scratch"
        )
    if recorded != key and is_main_process():
        write_atomically(recorded_file, key)
