"""Rebuild a registered model version from its recorded lineage and diff its metrics.

    ratchet reproduce 3

Reads the version's lineage (``lineage/config.yaml``, the prepared data's DVC md5, the base
model and its hash), materialises that data from the DVC cache or the local DVC remote by
md5 into a temporary workspace, re-runs pretraining (when enabled) and fine-tuning with the
recorded config, evaluates on the same test split and reports every metric difference
against the registered version. With ``train.deterministic: true`` on CPU the metrics match
exactly. Timing metrics (latency, throughput) are left out of the comparison.

The rebuild uses the code of this checkout; when it is not the recorded git commit (or that
tree was dirty) the report says so in ``notes``.
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from components import registry
from components.behaviour import AUTO
from components.config import RatchetConfig, config_from_mapping
from components.errors import RegistryError
from components.state import ProjectPaths, dvc_remote_url

if TYPE_CHECKING:
    from components.evaluate import EvaluationReport

TIMING_PREFIXES = ("latency_", "throughput_")


@dataclass(frozen=True)
class ReproduceReport:
    """Registered vs reproduced metrics of one version."""

    version: str
    workspace: str
    differences: dict[str, dict[str, float]]
    predictions_differing: int
    notes: list[str] = field(default_factory=list)

    @property
    def matches(self) -> bool:
        exact = all(row["delta"] == 0 for row in self.differences.values())
        return exact and self.predictions_differing == 0

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "matches": self.matches}


def materialize_dvc_dir(md5: str, stores: list[Path], destination: Path) -> Path:
    """Copy the folder DVC recorded as ``md5`` (``<hash>.dir``) out of a cache or remote
    folder, through DVC's object databases (``components.versioning.object_store``).

    Raises:
        RegistryError: no store holds the folder listing or one of its files.
    """
    from dvc_data.hashfile.hash_info import HashInfo
    from dvc_data.hashfile.tree import Tree

    from components.versioning import object_store

    databases = [object_store(store) for store in stores]
    listing = next((database for database in databases if database.exists(md5)), None)
    if listing is None:
        searched = ", ".join(str(store) for store in stores)
        raise RegistryError(
            f"data {md5} is in no DVC cache or remote searched ({searched}); "
            "run `ratchet data push` where it was built, or `dvc pull`"
        )
    for key, _, hash_info in Tree.load(listing, HashInfo("md5", md5)):
        relpath, oid = "/".join(key), str(hash_info.value)
        holder = next((database for database in databases if database.exists(oid)), None)
        if holder is None:
            raise RegistryError(f"file {relpath} ({oid}) of data {md5} is missing")
        target = destination / relpath
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(holder.oid_to_path(oid), target)
    return destination


def dvc_stores(config: RatchetConfig, paths: ProjectPaths) -> list[Path]:
    """The project's DVC cache, then the remote when it is a local folder."""
    stores = [paths.project_root / ".dvc" / "cache"]
    remote = dvc_remote_url(config, paths)
    if "://" not in remote:
        stores.append(paths.resolve(remote))
    return stores


def recorded_config(client: Any, model_version: Any) -> RatchetConfig:
    """The resolved config logged with the version (``lineage/config.yaml``)."""
    return config_from_mapping(registry.version_config_tree(client, model_version))


def anchored_config(config: RatchetConfig, paths: ProjectPaths) -> RatchetConfig:
    """Relative paths in the config made absolute against the original project root."""
    corpora = [str(paths.resolve_data(corpus)) for corpus in config.pretrain.extra_corpora]
    base = config.model.base
    if base is not None and paths.resolve(base).exists():
        base = str(paths.resolve(base))
    checks = config.eval.behaviour_checks
    if checks is not None and checks != AUTO:
        checks = str(paths.resolve(checks))
    return config.model_copy(
        update={
            "pretrain": config.pretrain.model_copy(update={"extra_corpora": corpora}),
            "model": config.model.model_copy(update={"base": base}),
            "eval": config.eval.model_copy(update={"behaviour_checks": checks}),
        }
    )


def code_notes(paths: ProjectPaths, tags: dict[str, str]) -> list[str]:
    from components.lineage import git_output

    notes = []
    recorded = tags.get("git_commit")
    current = git_output(paths.project_root, "rev-parse", "HEAD")
    if recorded and current and recorded != current:
        notes.append(f"rebuilt with code at {current[:12]}, the version records {recorded[:12]}")
    if tags.get("git_dirty", "").lower() == "true":
        notes.append("the version was built from a dirty working tree")
    return notes


def rebuild_model(config: RatchetConfig, workspace: ProjectPaths, base_model: str) -> Path:
    """Run the pipeline declaration's model stages in order in the workspace (those the
    config enables), each from the previous one's model and into its declared output,
    starting from ``base_model`` (resolved); returns the last model folder."""
    from components.model_stages import MODEL_NODES, ModelStageRun
    from components.pipeline import PIPELINE, is_enabled

    model_dir = base_model
    for stage in PIPELINE.group("model"):
        if is_enabled(config, stage):
            run = ModelStageRun(model_dir, workspace.project_root / stage.model_output)
            model_dir = str(MODEL_NODES[stage.name](config, workspace, run).model_dir)
    return Path(model_dir)


def recorded_inputs(model_name: str, version: str, tags: dict[str, str]) -> dict[str, str]:
    """``path -> md5`` of the data outputs the model stages read (``data/prepared``), as
    the version's lineage tags record them.

    Raises:
        RegistryError: the version lacks one of those tags.
    """
    from components.pipeline import PIPELINE

    recorded = {}
    for stage in PIPELINE.group("model"):
        for out in PIPELINE.data_inputs(stage):
            md5 = tags.get(out.lineage_tag)
            if not md5 or md5 == "None":
                raise RegistryError(f"{model_name} v{version} records no {out.lineage_tag}")
            recorded[out.path] = md5
    return recorded


def materialize_inputs(
    inputs: dict[str, str], config: RatchetConfig, paths: ProjectPaths, workspace: ProjectPaths
) -> None:
    """Copy each recorded input out of the DVC cache or remote into the workspace and
    check that it hashes to the md5 recorded."""
    from components.versioning import directory_md5

    for out_path, md5 in inputs.items():
        target = workspace.project_root / out_path
        materialize_dvc_dir(md5, dvc_stores(config, paths), target)
        if directory_md5(target) != md5:
            raise RegistryError(f"materialised data does not hash to {md5}")


def reproduce_version(
    model_name: str,
    version: str,
    paths: ProjectPaths,
    keep: bool = False,
    client: Any = None,
) -> ReproduceReport:
    """Rebuild ``version`` from its lineage in a temporary workspace and diff its metrics.

    Args:
        model_name: ``registry.model_name``.
        version: the version to reproduce.
        paths: this project's paths (DVC cache, remote, base model, corpora).
        keep: keep the workspace (its path is in the report).

    Raises:
        RegistryError: the version lacks lineage, or its data or base model cannot be found
            or no longer has the recorded hash.
    """
    from components.base_model import model_fingerprint, resolve_base_model
    from components.model_stages import evaluate_node

    client = client or registry.make_client()
    model_version = registry.get_version(client, model_name, version)
    tags = dict(model_version.tags)
    inputs = recorded_inputs(model_name, version, tags)
    config = anchored_config(recorded_config(client, model_version), paths)
    notes = code_notes(paths, tags)
    base = resolve_base_model(config.model.base, paths.project_root)
    recorded_hash = tags.get("base_model_hash")
    if recorded_hash and model_fingerprint(base) != recorded_hash:
        raise RegistryError(
            f"base model {base} now hashes to {model_fingerprint(base)}, "
            f"the version records {recorded_hash}"
        )

    root = Path(tempfile.mkdtemp(prefix=f"ratchet-reproduce-v{version}-"))
    workspace = ProjectPaths(project_root=root, state_dir=root / ".ratchet")
    try:
        materialize_inputs(inputs, config, paths, workspace)
        model_dir = rebuild_model(config, workspace, base)
        # Suites named by eval.behaviour_checks are found in this project, not the workspace.
        report = evaluate_node(
            config, workspace, model_dir, workspace.metrics_dir, paths.project_root
        )
        registered = registry.load_evaluation(client, model_name, version)
        differences, differing = compare_to_registered(registered, report, notes)
        return ReproduceReport(
            version=str(version),
            workspace=str(root) if keep else "",
            differences=differences,
            predictions_differing=differing,
            notes=notes,
        )
    finally:
        if not keep:
            shutil.rmtree(root, ignore_errors=True)


def compare_to_registered(
    registered: EvaluationReport, reproduced: EvaluationReport, notes: list[str]
) -> tuple[dict[str, dict[str, float]], int]:
    """Metric deltas (timings left out) and how many test predictions differ; a test
    split that differs is noted and counts every prediction as differing."""
    differences = {
        name: {
            "registered": value,
            "reproduced": reproduced.metrics[name],
            "delta": reproduced.metrics[name] - value,
        }
        for name, value in sorted(registered.metrics.items())
        if name in reproduced.metrics and not name.startswith(TIMING_PREFIXES)
    }
    if registered.test_split_md5 != reproduced.test_split_md5:
        notes.append("the materialised test split differs from the registered one")
        return differences, len(reproduced.predicted_ids)
    return differences, int(np.sum(registered.predicted_ids != reproduced.predicted_ids))
