"""Data lineage of the current workspace, for the MLflow tags of every model version.

:func:`workspace_lineage` names the code (git commit, dirty flag) and the exact data
bytes (DVC md5 of ``data/raw`` and ``data/prepared``) a run used.
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

from components.feedback_data import feedback_lineage
from components.pipeline import PIPELINE
from components.versioning import locked_md5, workspace_md5


def git_output(project_root: Path, *args: str) -> str | None:
    """stdout of a git command, or None outside a git repository / without git."""
    try:
        done = subprocess.run(
            ["git", *args], cwd=project_root, capture_output=True, text=True, check=False
        )
    except FileNotFoundError:
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def workspace_lineage(project_root: Path) -> dict[str, Any]:
    """Git commit, dirty flag and DVC md5s of the raw and prepared data.

    The md5s are computed from the workspace (the bytes a run actually reads) and equal
    the ``dvc.lock`` entries when the data is committed; ``data_matches_lock`` says so.

    Args:
        project_root: the model's folder (the project root for the default model).

    Returns:
        ``git_commit`` (str or None), ``git_dirty`` (bool or None; tracked files changed),
        ``raw_data_md5``, ``prepared_data_md5`` (str or None when absent) and
        ``data_matches_lock`` (bool), ``feedback_rows`` (feedback rows in the prepared
        train split) and ``feedback_data_md5`` (when ``data/feedback`` exists).
    """
    commit = git_output(project_root, "rev-parse", "HEAD")
    status = git_output(project_root, "status", "--porcelain", "--untracked-files=no")
    lineage: dict[str, Any] = {
        "git_commit": commit,
        "git_dirty": None if status is None else bool(status),
    }
    # The outputs the pipeline declaration tags for lineage: data/raw, data/prepared.
    outputs = PIPELINE.lineage_outputs()
    for tag, out_path in outputs.items():
        lineage[tag] = workspace_md5(project_root / out_path)
    lineage["data_matches_lock"] = all(
        lineage[tag] == locked_md5(project_root, out_path) for tag, out_path in outputs.items()
    )
    lineage.update(feedback_lineage(project_root))
    return lineage
