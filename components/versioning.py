"""Data versioning with DVC: the one module that runs DVC.

The pipeline's stages live in ``dvc.yaml``; ``dvc repro`` runs them and records every
dependency and output md5 in ``dvc.lock``. When the Prefect flow runs the same stage
functions itself, :func:`commit_stage_outputs` records their outputs the same way. The
default remote is the state folder's ``dvc-remote`` (``.dvc/config``); a run-time URL
(``tracking.dvc_remote_url`` or ``$RATCHET_HOME``) is written to ``.dvc/config.local``
by :func:`configure_remote`, so one config line switches to S3.

md5s here are DVC's, computed by DVC's own hashing (``dvc_data``): a file's md5 of its
bytes, a folder's the md5 of its tree listing with a ``.dir`` suffix, as ``dvc.lock``
records them. :func:`object_store` opens a cache or remote folder with DVC's layout.
"""

from __future__ import annotations

import logging
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import yaml

from components.errors import VersioningError
from components.pipeline import PIPELINE

if TYPE_CHECKING:
    from dvc_data.hashfile.db import HashFileDB

logger = logging.getLogger(__name__)

REMOTE_NAME = "local"
LOCK_FILE = "dvc.lock"
# Stages whose cached outputs are the data (data/raw, data/prepared); the default targets
# of push and pull, since a plain `dvc pull` also wants model outputs not built yet.
DATA_STAGES = tuple(PIPELINE.cached_data_stages())


def dvc_executable() -> str:
    """The ``dvc`` beside the running Python (the venv's), else the one on PATH."""
    beside = Path(sys.executable).parent / "dvc"
    found = str(beside) if beside.is_file() else shutil.which("dvc")
    if not found:
        raise VersioningError("dvc is not installed: pip install -c constraints.txt dvc")
    return found


def run_dvc(project_root: Path, *args: str, env: dict[str, str] | None = None) -> str:
    """Run one DVC command in ``project_root`` (a model's folder: stage names are those of
    its ``dvc.yaml``); its failure becomes a VersioningError.

    DVC holds one lock per repository while a command runs; the models of a project
    share the repository, so a command waits for another model's (``--wait-for-lock``)
    instead of failing after a few seconds.
    """
    command = [dvc_executable(), "--wait-for-lock", *args]
    logger.debug("running %s", " ".join(command))
    done = subprocess.run(
        command, cwd=project_root, capture_output=True, text=True, check=False, env=env
    )
    if done.returncode != 0:
        detail = (done.stderr or done.stdout).strip()
        raise VersioningError(f"`dvc {' '.join(args)}` failed in {project_root}:\n{detail}")
    return done.stdout


def dvc_repo_root(folder: Path) -> Path | None:
    """The DVC repository ``folder`` is in: the nearest folder with a ``.dvc/`` from
    ``folder`` up to its git repository's root (None: not in a DVC repository)."""
    for candidate in (folder, *folder.parents):
        if (candidate / ".dvc").is_dir():
            return candidate
        if (candidate / ".git").exists():
            return None
    return None


def ensure_dvc_repo(project_root: Path) -> bool:
    """``dvc init`` when ``project_root`` (or a model folder in it) is in no DVC
    repository yet (it must be a git repo).

    Returns:
        True when a repository was created.
    """
    if dvc_repo_root(project_root) is not None:
        return False
    if not (project_root / ".git").exists():
        raise VersioningError(f"{project_root} is not a git repository: run `git init` first")
    run_dvc(project_root, "init", "--quiet")
    return True


def configure_remote(project_root: Path, url: str, name: str = REMOTE_NAME) -> None:
    """Point the default remote at ``url`` for this workspace only (``.dvc/config.local``).

    Args:
        project_root: the DVC repository, or a model folder in it.
        url: a folder path or a remote URL such as ``s3://bucket/ratchet``.
        name: remote name; it becomes the default remote.
    """
    from dvc.config import Config, ConfigError  # DVC's own config writer, no subprocess

    from components.secrets import mask_uri_credentials

    if "://" not in url:
        Path(url).mkdir(parents=True, exist_ok=True)
    repository = dvc_repo_root(project_root) or project_root
    try:
        with Config(str(repository / ".dvc")).edit("local") as local:
            local["remote"][name] = {"url": url}
            local["core"]["remote"] = name
    except ConfigError as error:
        shown = mask_uri_credentials(url)
        raise VersioningError(f"cannot set DVC remote {name}={shown}: {error}") from error


def reproduce(project_root: Path, targets: Sequence[str] = ()) -> str:
    """``dvc repro`` the named stages (and what they depend on); returns DVC's log.

    Stage commands call ``ratchet``, so its folder must be on ``PATH``. The data folder's
    lock is held for the whole run and handed to the stage commands, so no other writer
    slips in between two stages.
    """
    from components.locks import child_environment, data_lock

    with data_lock(project_root / "data") as lock_file:
        return run_dvc(project_root, "repro", *targets, env=child_environment(lock_file))


def commit_stage_outputs(project_root: Path, targets: Sequence[str] = ()) -> None:
    """Record the current outputs of stages run outside ``dvc repro`` in ``dvc.lock``.

    Args:
        project_root: the DVC repository.
        targets: stage names (``ingest``, ``validate``, ``prepare``); empty commits all.
    """
    run_dvc(project_root, "commit", "--force", "--quiet", *targets)


def push(project_root: Path, remote_url: str, targets: Sequence[str] = DATA_STAGES) -> None:
    """Upload the outputs of ``targets`` to ``remote_url`` (this workspace's default remote)."""
    configure_remote(project_root, remote_url)
    run_dvc(project_root, "push", "--quiet", *targets)


def pull(project_root: Path, remote_url: str, targets: Sequence[str] = DATA_STAGES) -> None:
    """Download the outputs of ``targets`` from ``remote_url`` and check them out."""
    configure_remote(project_root, remote_url)
    run_dvc(project_root, "pull", "--quiet", *targets)


def file_md5(path: Path) -> str:
    """md5 of a file's bytes, as DVC records it."""
    from dvc_data.hashfile.hash import file_md5 as dvc_file_md5

    return dvc_file_md5(str(path))


def directory_md5(folder: Path) -> str:
    """DVC's md5 of a folder (``<md5>.dir``), built by DVC's own tree builder."""
    from dvc_data.hashfile.build import build
    from dvc_data.hashfile.hash import DEFAULT_ALGORITHM
    from dvc_objects.fs.local import LocalFileSystem

    fs = LocalFileSystem()
    # dry_run: hash only; nothing is written to the (never created) store.
    _, _, tree = build(object_store(folder), str(folder), fs, DEFAULT_ALGORITHM, dry_run=True)
    return str(tree.hash_info.value)


def object_store(folder: Path) -> HashFileDB:
    """A DVC cache or local remote folder as DVC's object database (``files/md5`` inside,
    DVC 3's layout, as ``dvc.data_cloud.Remote`` builds it)."""
    from dvc.cachemgr import CacheManager
    from dvc_data.hashfile.db import get_odb
    from dvc_data.hashfile.hash import DEFAULT_ALGORITHM
    from dvc_objects.fs.local import LocalFileSystem

    fs = LocalFileSystem()
    path = fs.join(str(folder), CacheManager.FILES_DIR, DEFAULT_ALGORITHM)
    return get_odb(fs, path, hash_name=DEFAULT_ALGORITHM)


def workspace_md5(path: Path) -> str | None:
    """DVC md5 of a file or folder as it is now; None when it does not exist."""
    if path.is_dir():
        return directory_md5(path)
    return file_md5(path) if path.is_file() else None


def locked_md5(project_root: Path, out_path: str) -> str | None:
    """The md5 DVC recorded for an output, from ``dvc.lock`` or ``<out>.dvc``.

    Args:
        project_root: the DVC repository.
        out_path: the output path relative to the root, e.g. ``data/prepared``.
    """
    # Read as YAML (DVC's lock schema: stages -> outs -> path, md5) on purpose: DVC's
    # Repo(root).index takes ~1.3 s and needs every stage's params to resolve.
    records: list[dict] = []
    lock = project_root / LOCK_FILE
    if lock.is_file():
        stages = (yaml.safe_load(lock.read_text(encoding="utf-8")) or {}).get("stages", {})
        records = [out for stage in stages.values() for out in stage.get("outs", [])]
    dvc_file = project_root / f"{out_path}.dvc"
    if dvc_file.is_file():
        records += (yaml.safe_load(dvc_file.read_text(encoding="utf-8")) or {}).get("outs", [])
    for record in records:
        if record.get("path") in (out_path, Path(out_path).name):
            return record.get("md5")
    return None
