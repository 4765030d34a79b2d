"""Step caches of the retrain flow: their keys, reuse, forced reruns and pruning.

A training step's key hashes what it reads (prepared data, its config sections, the
upstream model's fingerprint, the code version); its model folder and checkpoints are named
after the key, so a cached result always points at the model it describes.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from pathlib import Path
from typing import Any

from prefect import get_run_logger

from components.base_model import model_fingerprint, resolve_base_model
from components.config import RatchetConfig
from components.state import ProjectPaths
from flows.keys import code_version, step_key
from flows.run_record import RunRecord


def training_keys(
    config: RatchetConfig, paths: ProjectPaths, md5s: dict[str, Any]
) -> dict[str, str]:
    """The cache keys of the training steps this config runs (``pretrain`` when enabled,
    ``train``): each hashes the prepared data, the config sections the step reads (and,
    for pretraining, the bytes of ``pretrain.extra_corpora``), the upstream model's key
    and the code version."""
    from components.pretrain_corpus import corpora_fingerprint

    base = resolve_base_model(config.model.base, paths.project_root)
    code = code_version()
    keys: dict[str, str] = {}
    upstream = step_key("base", model_fingerprint(base))
    if config.pretrain.enabled:
        keys["pretrain"] = upstream = step_key(
            "pretrain",
            md5s["prepared_data_md5"],
            config.section_hash("pretrain", "model"),
            corpora_fingerprint(config, paths),
            upstream,
            code,
        )
    keys["train"] = step_key(
        "train", md5s["prepared_data_md5"], config.section_hash("train", "model"), upstream, code
    )
    return keys


def discard_checkpoints(paths: ProjectPaths, keys: dict[str, str]) -> None:
    """Delete the checkpoints of ``keys``: a forced run trains from scratch, it does not
    resume what an earlier run of the same key left behind."""
    for key in keys.values():
        folder = paths.checkpoints_dir / key
        if folder.exists():
            logging.getLogger(__name__).info("--force: deleting the checkpoints in %s", folder)
            shutil.rmtree(folder)


def mark_caches_used(paths: ProjectPaths, keys: dict[str, str]) -> None:
    """Date the step caches of ``keys`` as used now, so pruning spares them."""
    for key in keys.values():
        if (paths.artifacts_dir / key).is_dir():
            os.utime(paths.artifacts_dir / key)


def prune_caches(config: RatchetConfig, paths: ProjectPaths) -> None:
    from components.state import prune_step_caches

    max_age = config.tracking.cache_max_age_days
    if max_age is None:
        return
    pruned = prune_step_caches(paths, max_age)
    if pruned:
        get_run_logger().info(
            "deleted %d step caches unused for %g days: %s",
            len(pruned),
            max_age,
            ", ".join(folder.name for folder in pruned),
        )


def run_cached(
    task: Any, record: RunRecord, name: str, force: bool, model_dir: Path, **arguments: Any
) -> dict[str, Any]:
    """Run a cached task; rerun it when forced or when its cached model folder is gone."""
    fresh = force or not (model_dir / "config.json").is_file()
    started = time.perf_counter()
    state = task.with_options(refresh_cache=fresh)(**arguments, return_state=True)
    result: dict[str, Any] = state.result()
    status = "cached" if state.name == "Cached" else "done"
    if Path(result["model_dir"]).is_dir():
        os.utime(result["model_dir"])  # the folder's age is its last use
    record.add_step(name, status, time.perf_counter() - started, {"model_dir": result["model_dir"]})
    return result
