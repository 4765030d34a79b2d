"""The node functions of the pipeline's model and evaluation stages, by the names the
declaration gives them.

``components/pipeline.py`` declares the stages; the retrain flow (one cached Prefect task
per stage) and ``ratchet reproduce`` (a rebuild in a temporary workspace) both run the
model stages in the declaration's order through :data:`MODEL_NODES` and score the result
with :func:`evaluate_node`, so neither knows how a stage reads its inputs. ``ratchet
pretrain`` / ``ratchet train`` (the ``dvc.yaml`` commands) wrap the same stage functions
with their DVC paths.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeAlias

from components.config import RatchetConfig
from components.state import ProjectPaths

if TYPE_CHECKING:  # the training loop imports torch: not at import time
    from components.training.loop import MetricsCallback


@dataclass(frozen=True)
class ModelStageRun:
    """Where one run of a model stage starts and writes.

    Attributes:
        init_model: the model it starts from (a resolved base or the previous stage's).
        output_dir: the Hugging Face folder it writes.
        checkpoint_dir: resumable checkpoints (None: no checkpoints).
        on_metrics: per-step metrics callback.
    """

    init_model: str
    output_dir: Path
    checkpoint_dir: Path | None = None
    on_metrics: MetricsCallback | None = None


@dataclass(frozen=True)
class ModelStageResult:
    """A model stage's output folder, metrics and non-numeric facts."""

    model_dir: Path
    metrics: dict[str, float]
    info: dict[str, str] = field(default_factory=dict)


ModelNode: TypeAlias = Callable[[RatchetConfig, ProjectPaths, ModelStageRun], ModelStageResult]


def pretrain_node(
    config: RatchetConfig, paths: ProjectPaths, run: ModelStageRun
) -> ModelStageResult:
    """MLM pretraining of the resolved base on the training texts and
    ``pretrain.extra_corpora``; the metrics include the corpus counts."""
    from components.pretrain import run_pretraining
    from components.pretrain_corpus import gather_pretraining_texts

    corpus = gather_pretraining_texts(config, paths)
    result = run_pretraining(
        config,
        corpus.texts,
        run.output_dir,
        run.checkpoint_dir,
        run.on_metrics,
        base_model=run.init_model,
    )
    return ModelStageResult(result.model_dir, {**result.metrics, **corpus.metrics}, result.info)


def train_node(config: RatchetConfig, paths: ProjectPaths, run: ModelStageRun) -> ModelStageResult:
    """Fine-tuning on ``data/prepared``: a sequence classifier, or a token classifier
    with ``data.task`` token-classification."""
    from components.finetune import run_finetuning
    from components.token_prepare import load_task_data

    data = load_task_data(config.data.task, paths.prepared_dir)
    result = run_finetuning(
        config, data, run.init_model, run.output_dir, run.checkpoint_dir, run.on_metrics
    )
    return ModelStageResult(result.model_dir, result.metrics, result.info)


MODEL_NODES: dict[str, ModelNode] = {"pretrain": pretrain_node, "train": train_node}


def evaluate_node(
    config: RatchetConfig,
    paths: ProjectPaths,
    model_dir: Path,
    output_dir: Path,
    suites_root: Path,
    on_no_suite: Callable[[str], None] | None = None,
) -> Any:
    """Score ``model_dir`` on the prepared test split: metrics, plots, slices, latency,
    behavioural checks (suites found under ``suites_root``; without one, ``on_no_suite``
    gets the notice saying why), at the settings the model will be served with
    (``model.max_length``, ``serving.precision``). Returns the ``EvaluationReport``; for
    ``data.task`` token-classification a ``TokenEvaluationReport`` (entity scores, the
    per-type confusion and error tables, the NER suite for the data's entity types)."""
    from functools import partial

    from components.behaviour import suite_for_labels
    from components.evaluate import evaluate_model
    from components.token_behaviour import run_entity_suite, token_suite_for_labels
    from components.token_evaluate import evaluate_token_model
    from components.token_prepare import TASK, load_task_data

    data = load_task_data(config.data.task, paths.prepared_dir)
    setting = config.eval.behaviour_checks
    settings = (config.model.max_length, config.serving.precision)
    if config.data.task == TASK:
        entity_suite, notice = token_suite_for_labels(setting, data.labels, suites_root)
        announce_missing_suite(entity_suite, notice, on_no_suite)
        checks = (
            None if entity_suite is None else partial(run_entity_suite, entity_suite, data.labels)
        )
        return evaluate_token_model(
            model_dir, data.test, data.labels, config.eval, output_dir, *settings, checks
        )
    suite, notice = suite_for_labels(setting, data.labels, suites_root)
    announce_missing_suite(suite, notice, on_no_suite)
    return evaluate_model(
        model_dir, data.test, data.labels, config.eval, output_dir, suite, *settings
    )


def announce_missing_suite(
    suite: object | None, notice: str, on_no_suite: Callable[[str], None] | None
) -> None:
    """Tell ``on_no_suite`` why no behaviour suite runs (when none does)."""
    if suite is None and on_no_suite is not None:
        on_no_suite(notice)
