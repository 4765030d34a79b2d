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
from components.pipeline import PIPELINE, is_enabled, param_value, params_hash
from components.state import ProjectPaths
from flows.keys import code_version, step_key
from flows.run_record import RunRecord


def training_keys(
    config: RatchetConfig,
    paths: ProjectPaths,
    md5s: dict[str, Any],
    base_model: str | None = None,
) -> dict[str, str]:
    """The cache keys of the model stages of the pipeline declaration that this config
    runs (``pretrain`` when enabled, ``train``), in order. Each hashes the DVC md5s of the
    data outputs the stage reads (``md5s`` by lineage tag), the values of its params keys,
    the bytes of the files its ``fingerprinted`` keys list, its upstream model's key (the
    base model's fingerprint when none) and the code version.

    Args:
        base_model: ``model.base`` resolved against the project root (resolved here when
            not given).
    """
    base = base_model or resolve_base_model(config.model.base, paths.project_root)
    code = code_version()
    keys: dict[str, str] = {}
    model_keys: dict[str, str] = {}  # what a stage's output is, also when it is skipped
    for stage in PIPELINE.group("model"):
        upstream_stage = PIPELINE.upstream_model(stage)
        upstream = (
            model_keys[upstream_stage.name]
            if upstream_stage is not None
            else step_key("base", model_fingerprint(base))
        )
        if not is_enabled(config, stage):
            model_keys[stage.name] = upstream  # its dependants start from its input
            continue
        keys[stage.name] = model_keys[stage.name] = step_key(
            stage.name,
            *(md5s[out.lineage_tag] for out in PIPELINE.data_inputs(stage)),
            params_hash(config, stage),
            *(listed_files_fingerprint(config, paths, key) for key in stage.fingerprinted),
            upstream,
            code,
        )
    return keys


def listed_files_fingerprint(config: RatchetConfig, paths: ProjectPaths, key: str) -> str:
    """Content fingerprint of the files a params key lists (e.g. ``pretrain.extra_corpora``),
    resolved against the model's folder, in order.

    Raises:
        DataError: a listed path does not exist.
    """
    from components.errors import DataError
    from components.fingerprints import path_fingerprint

    listed = [paths.resolve_data(item) for item in param_value(config, key)]
    missing = [str(path) for path in listed if not path.exists()]
    if missing:
        raise DataError(f"{key}: {', '.join(missing)} does not exist")
    return "+".join(path_fingerprint(path) for path in listed)


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
    """Run a cached task; rerun it when forced or when its cached model folder is gone.

    The caching is Prefect's (``cache_key_fn`` on the explicit key, persisted result);
    kept here: Prefect cannot know that the folder its cached result names was pruned or
    deleted, so that case (like ``--force``) refreshes the cache.
    """
    fresh = force or not (model_dir / "config.json").is_file()
    started = time.perf_counter()
    state = task.with_options(refresh_cache=fresh)(**arguments, return_state=True)
    result: dict[str, Any] = state.result()
    status = "cached" if state.name == "Cached" else "done"
    if Path(result["model_dir"]).is_dir():
        os.utime(result["model_dir"])  # the folder's age is its last use
    record.add_step(name, status, time.perf_counter() - started, {"model_dir": result["model_dir"]})
    return result
