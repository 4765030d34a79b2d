"""Average the weights of fine-tuned models that share a start: a uniform "model soup".

Fine-tunes of one pretrained model that differ only in their seed end in the same basin
of the loss, so the mean of their weights is itself a good model, and often better than
each of them (Wortsman et al., 2022, "Model soups"). Unlike an ensemble, the soup costs
the same to serve as one model.

:func:`run_soup_finetuning` fine-tunes the members (resuming unfinished ones after a
crash) and :func:`average_model_folders` writes their mean. The members are sequence or
token classifiers, as ``data.task`` says: :func:`soup_recipe` names the task's fine-tune,
its re-score of a saved model and the validation metric it selects on.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import cast

import torch
from safetensors.torch import load_file, save_file

from components.config import RatchetConfig
from components.errors import TrainingError
from components.files import atomic_dir, write_metrics
from components.finetune_run import (
    FinetuneJob,
    FinetuneResult,
    check_finetune_inputs,
    finetune_once,
    score_saved_model,
)
from components.prepare import PreparedData
from components.token_finetune import METRIC_NAME as TOKEN_METRIC_NAME
from components.token_finetune import (
    check_token_inputs,
    finetune_tokens_once,
    score_saved_token_model,
)
from components.training.loop import MetricsCallback
from components.training.resume import RUN_KEY_FILE
from components.training.runtime import Precision, broadcast_from_main, init_distributed

logger = logging.getLogger(__name__)

WEIGHT_SUFFIX = ".safetensors"


def weight_files(model_dir: Path) -> list[str]:
    """Names of the safetensors files of a Hugging Face folder (one, or the shards)."""
    names = sorted(path.name for path in model_dir.glob(f"*{WEIGHT_SUFFIX}"))
    if not names:
        raise TrainingError(f"{model_dir} holds no {WEIGHT_SUFFIX} weights to average")
    return names


def check_soup_members(member_dirs: Sequence[Path]) -> list[str]:
    """The weight file names the members share.

    Raises:
        TrainingError: fewer than two members, or members whose configs (architecture,
            labels, sizes) or weight files differ: their weights do not line up.
    """
    if len(member_dirs) < 2:
        raise TrainingError(f"a soup needs at least two models, got {len(member_dirs)}")
    first = member_dirs[0]
    first_config = json.loads((first / "config.json").read_text())
    names = weight_files(first)
    for other in member_dirs[1:]:
        config = json.loads((other / "config.json").read_text())
        differing = sorted(
            key
            for key in first_config.keys() | config.keys()
            if first_config.get(key) != config.get(key)
        )
        if differing:
            raise TrainingError(
                f"cannot average {other} with {first}: their configs differ in {differing}"
            )
        if weight_files(other) != names:
            raise TrainingError(f"cannot average {other} with {first}: different weight files")
    return names


def add_member_weights(
    totals: dict[str, torch.Tensor], first: dict[str, torch.Tensor], member: dict[str, torch.Tensor]
) -> None:
    """Add one member's floating-point weights into the fp32 ``totals``; integer buffers
    such as position ids must equal the first member's."""
    if set(member) != set(first):
        raise TrainingError(
            f"cannot average: weight names differ ({sorted(set(member) ^ set(first))[:5]})"
        )
    for name, value in member.items():
        reference = first[name]
        if value.shape != reference.shape:
            raise TrainingError(
                f"cannot average {name}: shapes {tuple(reference.shape)} and {tuple(value.shape)}"
            )
        if reference.is_floating_point():
            totals[name] += value.float()
        elif not torch.equal(value, reference):
            raise TrainingError(f"cannot average {name}: its non-float values differ")


def average_model_folders(member_dirs: Sequence[Path], output_dir: Path) -> Path:
    """Write the uniform average of ``member_dirs``' weights as a Hugging Face folder.

    The config and tokenizer are the first member's (they are the same in all). Weights
    are summed in fp32 one member at a time, so memory holds two models, not all of them.
    The folder is assembled beside ``output_dir`` and renamed into place, so a crash
    leaves the previous folder or the new one, never a half-written one.

    Raises:
        TrainingError: the members cannot be averaged (see :func:`check_soup_members`).
    """
    names = check_soup_members(member_dirs)
    with atomic_dir(output_dir) as folder:
        shutil.copytree(
            member_dirs[0],
            folder,
            ignore=shutil.ignore_patterns(f"*{WEIGHT_SUFFIX}"),
            dirs_exist_ok=True,
        )
        for file_name in names:
            first = load_file(member_dirs[0] / file_name)
            totals = {
                name: value.to(torch.float32, copy=True)
                for name, value in first.items()
                if value.is_floating_point()
            }
            for member in member_dirs[1:]:
                add_member_weights(totals, first, load_file(member / file_name))
            averaged = {
                name: (totals[name] / len(member_dirs)).to(value.dtype)
                if value.is_floating_point()
                else value
                for name, value in first.items()
            }
            # Hugging Face loaders expect the "format" metadata that save_pretrained writes.
            save_file(averaged, folder / file_name, metadata={"format": "pt"})
    return output_dir


# Counts and durations that add up over a soup's members.
SUMMED_METRICS = (
    "steps",
    "samples_seen",
    "train_seconds",
    "train_cpu_seconds",
    "orchestration_seconds",
    "checkpoints_written",
)


@dataclass(frozen=True)
class SoupRecipe:
    """What a task brings to a soup.

    Attributes:
        check_inputs: fails before any compute on settings or data the task cannot train on.
        finetune_member: one run (``start_seed`` and ``on_saved`` as in
            :func:`components.finetune_run.finetune_once`).
        score_saved: the validation scores of a saved model folder at a precision, on the
            rows the members scored.
        metric_name: the validation score the runs select on, reported per member as
            ``seed_<n>_<metric_name>``.
    """

    check_inputs: Callable[[RatchetConfig, PreparedData, str], None]
    finetune_member: Callable[..., FinetuneResult]
    score_saved: Callable[[RatchetConfig, PreparedData, Path, Precision], dict[str, float]]
    metric_name: str


def soup_recipe(task: str) -> SoupRecipe:
    """The soup recipe of ``data.task``: token classifiers select on entity F1,
    sequence classifiers on accuracy."""
    if task == "token-classification":
        return SoupRecipe(
            lambda config, data, init_model: check_token_inputs(config, data),
            finetune_tokens_once,
            score_saved_token_model,
            TOKEN_METRIC_NAME,
        )
    return SoupRecipe(check_finetune_inputs, finetune_once, score_saved_model, "val_accuracy")


def run_soup_finetuning(job: FinetuneJob) -> FinetuneResult:
    """Fine-tune once per seed (``train.seed``, then ``train.soup_seeds``) from the same
    ``init_model`` and save the uniform average of the runs' weights.

    The members share their start: the init model, the new head's initial weights and,
    when ``train.max_train_samples`` or ``max_eval_samples`` pick a subset, the rows; they
    differ in data order and dropout. Each member checkpoints into ``seed-<n>/`` under
    ``checkpoint_dir`` and, once finished, keeps its model in ``seed-<n>-model/`` with its
    metrics in ``seed-<n>.json`` until the soup is written. A rerun after a crash therefore
    retrains only the unfinished members, each from its last checkpoint; without a
    ``checkpoint_dir`` the members live in a temporary folder and nothing resumes.

    Returns:
        The soup's folder; the validation scores (``val_accuracy``/``val_loss``, and
        ``val_entity_f1`` for token classifiers) are the soup's own,
        ``seed_<n>_val_accuracy`` (``seed_<n>_val_entity_f1``) each member's (on the same
        rows), and the step, sample and time counts are summed over the members.
    """
    config, output_dir, checkpoint_dir = job.config, job.output_dir, job.checkpoint_dir
    recipe = soup_recipe(config.data.task)
    recipe.check_inputs(config, job.data, job.init_model)
    if checkpoint_dir is None:
        with tempfile.TemporaryDirectory(prefix="ratchet-soup-") as scratch:
            return run_soup_finetuning(replace(job, checkpoint_dir=Path(scratch)))
    context = init_distributed()
    seeds = [config.train.seed, *config.train.soup_seeds]
    done = checkpoint_dir / "soup.json"
    finished_soup = load_recorded_result(done, output_dir)
    if finished_soup is None:
        members = train_soup_members(job, checkpoint_dir, recipe.finetune_member)
        metrics = soup_metrics(seeds, members, recipe.metric_name)
        info = {**members[0].info, "soup_seeds": ",".join(str(seed) for seed in seeds)}
        if context.is_main:
            average_model_folders([member.model_dir for member in members], output_dir)
            # Scored at the members' precision, not a fresh timing that could differ.
            precision = cast(Precision, info["precision"])
            metrics.update(recipe.score_saved(config, job.data, output_dir, precision))
            # From here a rerun reuses the soup, so a kill during the clean-up below
            # never sends members back to training.
            write_metrics(done, metrics, info)
        finished_soup = FinetuneResult(model_dir=output_dir, metrics=metrics, info=info)
    if context.enabled:
        finished_soup = broadcast_from_main(finished_soup)  # every rank reports the soup
    if context.is_main:
        for seed in seeds:
            shutil.rmtree(checkpoint_dir / f"seed-{seed}-model", ignore_errors=True)
            shutil.rmtree(checkpoint_dir / f"seed-{seed}", ignore_errors=True)
            (checkpoint_dir / f"seed-{seed}.json").unlink(missing_ok=True)
        done.unlink(missing_ok=True)
        (checkpoint_dir / RUN_KEY_FILE).unlink(missing_ok=True)
    metric = recipe.metric_name
    member_scores = [finished_soup.metrics[f"seed_{seed}_{metric}"] for seed in seeds]
    logger.info(
        "model soup of %d fine-tunes: %s %.4f (members: %s)",
        len(seeds),
        metric,
        finished_soup.metrics[metric],
        ", ".join(f"{score:.4f}" for score in member_scores),
    )
    return finished_soup


def train_soup_members(
    job: FinetuneJob, workdir: Path, finetune_member: Callable[..., FinetuneResult]
) -> list[FinetuneResult]:
    """Fine-tune (or reuse, when a record says it finished) one member per seed with
    ``finetune_member``, each with its checkpoints and finished model in ``workdir``."""
    config = job.config
    context = init_distributed()
    seeds = [config.train.seed, *config.train.soup_seeds]
    members: list[FinetuneResult] = []
    for seed in seeds:
        member_dir, record = workdir / f"seed-{seed}-model", workdir / f"seed-{seed}.json"
        finished = load_recorded_result(record, member_dir)
        if context.enabled:
            # Rank 0's view decides, so every rank trains the same members.
            finished = broadcast_from_main(finished)
        if finished is not None:
            logger.info("soup member seed %d already fine-tuned; reusing it", seed)
            members.append(finished)
            continue
        logger.info("soup member %d of %d: seed %d", len(members) + 1, len(seeds), seed)
        member_config = config.model_copy(
            update={"train": config.train.model_copy(update={"seed": seed, "soup_seeds": []})}
        )
        member = replace(
            job,
            config=member_config,
            output_dir=member_dir,
            checkpoint_dir=workdir / f"seed-{seed}",
            on_metrics=offset_steps(job.on_metrics, sum(m.metrics["steps"] for m in members)),
        )
        members.append(
            finetune_member(
                member, start_seed=config.train.seed, on_saved=partial(record_result, record)
            )
        )
    return members


def record_result(record: Path, result: FinetuneResult) -> None:
    write_metrics(record, result.metrics, result.info)


def offset_steps(on_metrics: MetricsCallback | None, offset: float) -> MetricsCallback | None:
    """A member's per-step metrics numbered after the previous members' steps, so the
    members' curves follow each other in one MLflow run instead of overlapping."""
    if on_metrics is None or not offset:
        return on_metrics
    return lambda step, metrics: on_metrics(step + int(offset), metrics)


def load_recorded_result(record: Path, model_dir: Path) -> FinetuneResult | None:
    """A finished run's result: its metrics file and its model folder both exist."""
    if not (record.is_file() and (model_dir / "config.json").is_file()):
        return None
    saved = json.loads(record.read_text())  # write_metrics' layout: the metrics + "info"
    info = saved.pop("info")
    return FinetuneResult(model_dir=model_dir, metrics=saved, info=info)


def soup_metrics(
    seeds: Sequence[int], members: Sequence[FinetuneResult], metric_name: str = "val_accuracy"
) -> dict[str, float]:
    """Summed counts and times, the members' mean training loss and each member's
    ``metric_name`` as ``seed_<n>_<metric_name>``."""
    metrics = {name: sum(m.metrics.get(name, 0.0) for m in members) for name in SUMMED_METRICS}
    metrics["train_samples_per_second"] = metrics["samples_seen"] / max(
        metrics["train_seconds"], 1e-9
    )
    metrics["train_loss"] = sum(m.metrics["train_loss"] for m in members) / len(members)
    metrics["train_examples"] = members[0].metrics["train_examples"]
    metrics["val_examples"] = members[0].metrics["val_examples"]
    metrics["soup_members"] = float(len(members))
    for seed, member in zip(seeds, members, strict=True):
        metrics[f"seed_{seed}_{metric_name}"] = member.metrics[metric_name]
    return metrics
