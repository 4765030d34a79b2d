"""Build a self-contained Bento for a registry version (or the version behind an alias).

    ratchet build --alias champion

Downloads the version's Hugging Face folder from MLflow into the BentoML model store
(labels and metadata name the registry version, its aliases, metrics and lineage), then
builds a Bento from ``serving/bentofile.yaml`` with python packages pinned from
``constraints.txt``. Each Bento is labelled ``registry.version``: the gate builds and
checks the challenger's Bento before the alias moves (``serving/release.py``), and
``ratchet serve`` runs the Bento of the version that holds the alias. Earlier Bentos stay
in the store, so a rollback finds the restored version's Bento there.

The version's ``task`` tag picks the service: ``token-classification`` builds the tagger
(``serving/token_service.py``, ``POST /entities``), anything else, or no tag, the
classifier (``serving/service.py``, ``POST /classify``); the downloaded model folder must
agree (a ``…ForTokenClassification`` architecture for a tagger). A tagger is served by
torch whatever ``serving.runtime`` says (the ONNX export covers sequence classifiers);
the Bento records the fall-back in its ``runtime.fallback`` label.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from components.config import RatchetConfig
from components.errors import RegistryError, ServingError
from components.state import ProjectPaths
from serving.tasks import (
    SERVICES,
    TEXT_TASK,
    TOKEN_TASK,
    TORCH_ONLY_FALLBACK,
    check_model_task,
    runtime_labels,
    served_runtime,
    version_task,
)

logger = logging.getLogger(__name__)

BENTOFILE = Path(__file__).with_name("bentofile.yaml")
# Modules that read the Bento arguments at import (dropped before each build).
SERVICE_MODULES = ("serving.service", "serving.token_service", "serving.contract")
HF_FOLDER = "hf_model"
# Version tags that are not lineage: MLflow's own, and metrics (kept as numbers).
# Parity figures are labelled from the build that measured them, never from stale tags.
NON_LINEAGE_TAG_PREFIXES = ("mlflow.", "parity.")
PARITY_FOLDER = "parity"
PARITY_PREDICTIONS = "predictions.parquet"
METRIC_TAG_PREFIX = "metric."
KEY_METRIC_PATTERN = re.compile(r"(accuracy|f1|precision|recall|ece|loss)", re.IGNORECASE)


def store_name(registry_name: str) -> str:
    """A registry name made valid as a BentoML tag name (lower case, ``[a-z0-9._-]``)."""
    cleaned = re.sub(r"[^a-z0-9._-]+", "-", registry_name.lower()).strip("-._")
    return cleaned or "model"


def lineage_tags(tags: dict[str, str]) -> dict[str, str]:
    """The registry version's tags that say where the model came from (data md5s, git
    commit, base model, config hash...): every tag but MLflow's own and the metrics."""
    return {
        key: str(value)
        for key, value in tags.items()
        if not key.startswith((*NON_LINEAGE_TAG_PREFIXES, METRIC_TAG_PREFIX))
    }


def tagged_metrics(tags: dict[str, str]) -> dict[str, float]:
    """Metrics the registry recorded as ``metric.<name>`` version tags."""
    metrics = {}
    for key, value in tags.items():
        if key.startswith(METRIC_TAG_PREFIX):
            with contextlib.suppress(ValueError):
                metrics[key.removeprefix(METRIC_TAG_PREFIX)] = float(value)
    return metrics


def key_metrics(metrics: dict[str, float]) -> dict[str, float]:
    """Evaluation metrics worth a label (accuracy, F1, ...), not per-step training noise."""
    return {name: value for name, value in metrics.items() if KEY_METRIC_PATTERN.search(name)}


def resolve_alias(model_name: str, alias: str) -> dict[str, Any]:
    """The registry version behind ``alias``: version, aliases, tags, run metrics.

    Raises:
        RegistryError: the model or the alias does not exist.
    """
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    try:
        version = MlflowClient().get_model_version_by_alias(model_name, alias)
    except MlflowException as error:
        raise RegistryError(
            f"registered model {model_name!r} has no alias {alias!r} ({error.message}); "
            "train and gate a model first (`ratchet retrain`), or move the alias to a "
            "version with `ratchet registry promote VERSION --reason ...`"
        ) from error
    return resolve_version(model_name, str(version.version), alias)


def resolve_version(model_name: str, version: str, alias: str | None = None) -> dict[str, Any]:
    """A registry version: number, aliases, tags, run metrics; ``alias`` names the alias it
    was resolved from (None when built for the version itself, e.g. by the gate).

    Raises:
        RegistryError: the model or the version does not exist.
    """
    from mlflow import MlflowClient

    from components.registry import get_version

    client = MlflowClient()
    model_version = get_version(client, model_name, version)
    metrics: dict[str, float] = {}
    if model_version.run_id:
        metrics = dict(client.get_run(model_version.run_id).data.metrics)
    metrics.update(tagged_metrics(dict(model_version.tags or {})))
    return {
        "name": model_name,
        "version": str(model_version.version),
        "alias": alias or "",
        "aliases": sorted(model_version.aliases or []),
        "run_id": model_version.run_id,
        "tags": dict(model_version.tags or {}),
        "metrics": metrics,
    }


def model_labels(registry: dict[str, Any]) -> dict[str, str]:
    """BentoML labels (strings only) naming the registry version and its lineage."""
    labels = {
        "registry.name": registry["name"],
        "registry.version": registry["version"],
        "registry.alias": registry["alias"],
        "registry.run_id": str(registry["run_id"] or ""),
    }
    labels.update(lineage_tags(registry["tags"]))
    labels.update({f"metric.{k}": f"{v:.6g}" for k, v in key_metrics(registry["metrics"]).items()})
    return labels


def model_store_tag(registry: dict[str, Any], runtime: str) -> str:
    """``<name>:v<version>``, plus ``-<runtime>`` for an exported runtime (its own files)."""
    suffix = "" if runtime == "torch" else f"-{runtime}"
    return f"{store_name(registry['name'])}:v{registry['version']}{suffix}"


def stored_model(tag: str, registry: dict[str, Any]) -> Any | None:
    """The BentoML store's model ``tag`` when it holds this registry version, else None.

    Raises:
        ServingError: the tag holds another registry's model (a shared BENTOML_HOME).
    """
    import bentoml
    from bentoml.exceptions import NotFound

    try:
        existing = bentoml.models.get(tag)
    except NotFound:
        return None
    stored_run = str(existing.info.metadata.get("run_id"))
    if stored_run != str(registry["run_id"]):
        raise ServingError(
            f"the BentoML model store already holds {tag} from MLflow run {stored_run}, "
            f"but {registry['name']} v{registry['version']} is run {registry['run_id']}: "
            "two registries share one BENTOML_HOME; give each state folder its own"
        )
    return existing


def save_to_model_store(
    registry: dict[str, Any],
    hf_dir: Path,
    runtime: str = "torch",
    parity: tuple[dict[str, str], pd.DataFrame] | None = None,
) -> str:
    """Copy the HF folder (with its exported ``onnx/`` graph) into the BentoML model store
    once per registry version and runtime.

    Args:
        parity: for an exported runtime, its ``parity.*`` labels and its predictions on the
            test split (kept in the store: the Bento check compares against them).

    Returns:
        The BentoML model tag, ``<name>:v<registry version>[-<runtime>]``.
    """
    import bentoml

    tag = model_store_tag(registry, runtime)
    existing = stored_model(tag, registry)
    if existing is not None:
        logger.info("model %s already in the BentoML store", existing.tag)
        return str(existing.tag)
    metadata = {
        "name": registry["name"],
        "version": registry["version"],
        "aliases": registry["aliases"],
        "run_id": registry["run_id"],
        "metrics": registry["metrics"],
        "lineage": lineage_tags(registry["tags"]),
        "runtime": runtime,
    }
    labels = model_labels(registry)
    if parity is not None:
        metadata["parity"] = parity[0]
        labels.update(parity[0])
    with bentoml.models.create(tag, labels=labels, metadata=metadata) as model:
        shutil.copytree(hf_dir, model.path_of(HF_FOLDER))
        if parity is not None:
            Path(model.path_of(PARITY_FOLDER)).mkdir()
            parity[1].to_parquet(model.path_of(f"{PARITY_FOLDER}/{PARITY_PREDICTIONS}"))
    logger.info("saved registry %s v%s as %s", registry["name"], registry["version"], tag)
    return tag


def stored_reference(model_tag: str) -> pd.DataFrame | None:
    """The exported runtime's own test-split predictions kept with a stored model (None
    for torch: its Bento must answer as evaluated)."""
    import bentoml

    path = Path(bentoml.models.get(model_tag).path_of(f"{PARITY_FOLDER}/{PARITY_PREDICTIONS}"))
    return pd.read_parquet(path) if path.is_file() else None


def prove_runtime(
    config: RatchetConfig, registry: dict[str, Any], hf_dir: Path
) -> tuple[dict[str, str], pd.DataFrame]:
    """Export ``hf_dir`` for ``serving.runtime`` and prove parity on the whole test split;
    the figures are recorded on the version whatever the outcome.

    Raises:
        ParityError: the runtime does not score like the evaluated torch model.
        ServingError: no recorded evaluation predictions, or the export failed.
    """
    from mlflow import MlflowClient

    from components.inference import onnx_path
    from components.registry import recorded_inference_settings, recorded_predictions
    from serving.parity import parity_error, parity_failures, record_parity, score_parity

    runtime = config.serving.runtime
    evaluated = recorded_predictions(MlflowClient(), registry["name"], registry["version"])
    if evaluated is None:
        raise ServingError(
            f"{registry['name']} v{registry['version']} has no recorded evaluation "
            f"predictions to prove the {runtime} runtime against; register it through "
            "`ratchet retrain`, or serve it with serving.runtime: torch"
        )
    max_length, _ = recorded_inference_settings(registry["tags"])
    report, predictions = score_parity(
        hf_dir, runtime, evaluated, max_length, config.eval.batch_size
    )
    failures = parity_failures(report)
    exported = onnx_path(hf_dir, runtime)
    record_parity(registry["name"], registry["version"], report, not failures, exported)
    if failures:
        raise parity_error(report, failures)
    return report.tags(), predictions


def pinned_packages(names: list[str], constraints_file: Path) -> list[str]:
    """``name==version`` for each package, versions from the lock (local suffixes such as
    ``+cpu`` dropped). Lines are read as PEP 508 requirements; names compare canonically
    (``PyYAML`` is ``pyyaml``).

    Raises:
        ServingError: a line is not a requirement, or a package is not pinned in the
            constraints file.
    """
    from packaging.requirements import InvalidRequirement, Requirement
    from packaging.utils import canonicalize_name
    from packaging.version import InvalidVersion, Version

    pins: dict[str, str] = {}
    for number, line in enumerate(constraints_file.read_text(encoding="utf-8").splitlines(), 1):
        text = line.split("#")[0].strip()
        if not text or text.startswith("-"):  # blank, comment or a pip option (-e, --index-url)
            continue
        try:
            requirement = Requirement(text)
        except InvalidRequirement as error:
            raise ServingError(
                f"{constraints_file}:{number}: not a requirement: {error}"
            ) from error
        for specifier in requirement.specifier:
            if specifier.operator in {"==", "==="}:
                try:
                    version = Version(specifier.version).public
                except InvalidVersion:  # a wildcard such as ==1.*: not a pin
                    continue
                pins[canonicalize_name(requirement.name)] = version
    missing = [name for name in names if canonicalize_name(name) not in pins]
    if missing:
        raise ServingError(f"{constraints_file} pins no version for {missing}")
    return [f"{name}=={pins[canonicalize_name(name)]}" for name in names]


def serve_arguments(config: RatchetConfig, model_tag: str, task: str = TEXT_TASK) -> dict[str, Any]:
    """Bento arguments read by ``serving/contract.py``. No secret: the API key is given to
    the server at start; ``auth_required`` records that one was configured at build, so
    the Bento refuses to start without one."""
    from serving.middleware import api_key_configured

    serving = config.serving
    return {
        "model_tag": model_tag,
        "max_texts": serving.max_texts,
        "max_chars": serving.max_chars,
        "max_body_bytes": serving.max_body_bytes,
        "max_batch_size": serving.max_batch_size,
        "max_latency_ms": serving.max_latency_ms,
        "precision": serving.precision,
        "runtime": served_runtime(config, task),
        "num_threads": serving.num_threads,
        "workers": serving.workers,
        "access_log": serving.access_log,
        "request_metrics": serving.request_metrics,
        "trace_requests": serving.trace_requests,
        "auth_required": api_key_configured(serving),
    }


def build_options(
    paths: ProjectPaths, labels: dict[str, str], task: str = TEXT_TASK
) -> dict[str, Any]:
    """``serving/bentofile.yaml`` with pinned packages, the given labels and the service
    of ``task``."""
    options = yaml.safe_load(BENTOFILE.read_text(encoding="utf-8"))
    options["service"] = SERVICES[task]
    if task == TOKEN_TASK:
        options["description"] = (
            "Ratchet named-entity tagger: the registry version behind POST /entities."
        )
    python = dict(options.get("python") or {})
    python["packages"] = pinned_packages(
        list(python.get("packages") or []), paths.project_root / "constraints.txt"
    )
    options["python"] = python
    options["labels"] = labels
    return options


def bentoml_home(paths: ProjectPaths) -> Path:
    """BentoML's home: ``BENTOML_HOME`` when set, else ``bentoml/`` in the state folder."""
    return Path(os.environ.get("BENTOML_HOME") or paths.bentoml_home)


@contextlib.contextmanager
def use_bentoml_home(home: Path) -> Iterator[None]:
    """Point this process's BentoML stores at ``home`` for the duration.

    BentoML resolves ``BENTOML_HOME`` once per process, on first use; a process that
    works with two state folders (tests, a notebook) would otherwise build into the first.
    """
    from bentoml._internal.bento import BentoStore
    from bentoml._internal.configuration.containers import BentoMLContainer
    from bentoml._internal.models import ModelStore

    folders = {name: home / name for name in ("bentos", "models", "envs", "tmp")}
    for folder in folders.values():
        folder.mkdir(parents=True, exist_ok=True)
    container = BentoMLContainer
    with contextlib.ExitStack() as stack:
        overrides: tuple[tuple[Any, Any], ...] = (
            (container.bentoml_home, str(home)),
            (container.bento_store_dir, str(folders["bentos"])),
            (container.model_store_dir, str(folders["models"])),
            (container.env_store_dir, str(folders["envs"])),
            (container.tmp_bento_store_dir, str(folders["tmp"])),
            (container.bento_store, BentoStore(str(folders["bentos"]))),
            (container.tmp_bento_store, BentoStore(str(folders["tmp"]))),
            (container.model_store, ModelStore(str(folders["models"]))),
        )
        for provider, value in overrides:
            stack.enter_context(provider.patch(value))
        yield


def bentos_of_version(model_name: str, version: str) -> list[Any]:
    """Bentos in the (current) store built for a registry version, newest first."""
    import bentoml
    from bentoml.exceptions import NotFound

    try:
        built = bentoml.bentos.list(f"{store_name(model_name)}-service")
    except NotFound:  # nothing built under this name yet
        return []
    found = [
        bento
        for bento in built
        if bento.info.labels.get("registry.name") == model_name
        and bento.info.labels.get("registry.version") == str(version)
    ]
    return sorted(found, key=lambda bento: bento.info.creation_time, reverse=True)


def build_bento(
    config: RatchetConfig,
    paths: ProjectPaths,
    alias: str | None = "champion",
    version: str | None = None,
) -> str:
    """Build a Bento serving a registry version: ``version``, else the one behind ``alias``.

    Args:
        config: the resolved configuration (registry name, serving limits).
        paths: project paths; the project root is the build context.
        alias: registry alias to serve, ``champion`` by default; ignored with ``version``.
        version: registry version to serve (the gate builds a challenger before any alias
            points at it).

    Returns:
        The Bento tag, e.g. ``ratchet-sst2-service:abc123``.

    Raises:
        RegistryError: the alias or version does not exist.
        ParityError: ``serving.runtime`` is exported and does not score the test split
            like the evaluated torch model (nothing is stored or built).
        ServingError: the build failed.
    """
    import bentoml

    from components.mlflow_model import download_hf_model

    name = config.registry.model_name
    if version is not None:
        registry = resolve_version(name, version)
    elif alias:
        registry = resolve_alias(name, alias)
    else:
        raise ServingError("build_bento needs a registry version or alias")
    task = version_task(registry["tags"])
    runtime = served_runtime(config, task)
    stored = stored_model(model_store_tag(registry, runtime), registry)
    if stored is None:
        with tempfile.TemporaryDirectory(prefix="ratchet-build-") as tmp:
            uri = f"models:/{registry['name']}/{registry['version']}"
            hf_dir = download_hf_model(uri, Path(tmp))
            check_model_task(hf_dir, task)
            # An exported runtime is stored (and so built) only once parity is proven.
            parity = None if runtime == "torch" else prove_runtime(config, registry, hf_dir)
            model_tag = save_to_model_store(registry, hf_dir, runtime, parity)
        parity_labels = parity[0] if parity is not None else {}
    else:
        model_tag = str(stored.tag)
        parity_labels = dict(stored.info.metadata.get("parity") or {})
    if runtime != config.serving.runtime:
        logger.warning(TORCH_ONLY_FALLBACK.format(runtime=config.serving.runtime))
    labels = {
        **model_labels(registry),
        **parity_labels,
        **runtime_labels(config, task),
        "bento_model": model_tag,
    }
    options = build_options(paths, labels, task)
    # The services read their Bento arguments at import; a module imported earlier in
    # this process would keep the previous model tag, so import them afresh for this build.
    for module in SERVICE_MODULES:
        sys.modules.pop(module, None)
    try:
        bento = bentoml.bentos.build(
            name=f"{store_name(registry['name'])}-service",
            build_ctx=str(paths.project_root),
            args=serve_arguments(config, model_tag, task),
            **options,
        )
    except bentoml.exceptions.BentoMLException as error:
        raise ServingError(f"building the Bento failed: {error}") from error
    logger.info("built Bento %s for %s v%s", bento.tag, registry["name"], registry["version"])
    return str(bento.tag)
