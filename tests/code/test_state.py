"""Pruning of the state folder's step caches."""

from __future__ import annotations

import os
from pathlib import Path

from components.state import ProjectPaths, prune_step_caches

NOW = 1_900_000_000.0
DAY = 86_400.0


def aged(path: Path, days: float) -> Path:
    os.utime(path, (NOW - days * DAY, NOW - days * DAY))
    return path


def folder(path: Path, days: float, files: tuple[str, ...] = ("config.json",)) -> Path:
    path.mkdir(parents=True)
    for name in files:
        (path / name).touch()
        aged(path / name, days)
    return aged(path, days)


def test_only_caches_unused_for_longer_than_the_limit_are_deleted(tmp_path: Path) -> None:
    paths = ProjectPaths(project_root=tmp_path, state_dir=tmp_path / "state")
    stale_model = folder(paths.artifacts_dir / "train-old", 30)
    recent_model = folder(paths.artifacts_dir / "train-new", 3)
    stale_eval = folder(paths.evaluations_dir / "train-old", 30, ("metrics.json",))
    # An old checkpoint folder whose run wrote a checkpoint yesterday is still in use.
    training = folder(paths.checkpoints_dir / "train-running", 30, ())
    folder(training / "step-00000200", 1, ("model.safetensors",))
    aged(training, 30)
    crashed = folder(paths.checkpoints_dir / "pretrain-crashed", 30, ())
    folder(crashed / "step-00000100", 30, ("model.safetensors",))
    aged(crashed, 30)
    half_deleted = folder(paths.artifacts_dir / ".trash-train-older", 1)
    registry = folder(paths.mlflow_artifacts / "0123abcd", 300)  # the registry's own store
    lock_file = paths.state_dir / "retrain-ratchet-sst2.lock"
    lock_file.touch()
    aged(lock_file, 300)

    removed = prune_step_caches(paths, 14, now=NOW)

    assert sorted(removed) == sorted([stale_model, stale_eval, crashed])
    for gone in (stale_model, stale_eval, crashed, half_deleted):
        assert not gone.exists(), gone
    for kept in (recent_model, training, registry, lock_file):
        assert kept.exists(), kept
    assert list(paths.artifacts_dir.iterdir()) == [recent_model]  # no trash left behind


def test_a_missing_state_folder_prunes_nothing(tmp_path: Path) -> None:
    paths = ProjectPaths(project_root=tmp_path, state_dir=tmp_path / "absent")
    assert prune_step_caches(paths, 0, now=NOW) == []
