"""Preflight: every check the configuration and the prepared data allow, before any training.

The retrain flow runs :func:`preflight` right after the data is prepared, and ``ratchet
pretrain`` / ``ratchet train`` (so the DVC stages too) before they start, so a setting
that cannot work stops the run in seconds, naming the setting to change, instead of at
evaluation after the training time is spent. Checked here:

- the prepared data is of ``data.task`` and has ``data.labels`` (else it is stale: prepare
  again);
- ``eval.behaviour_checks`` against the data's labels: ``auto`` runs the shipped suite
  written for them or none (a notice, not an error); a suite named explicitly for other
  labels is an error;
- the model training starts from (``model.base``) loads: its config (a hub id that is not
  cached and cannot be reached fails here, not after the data work), as the task's model
  class (``AutoModelForSequenceClassification`` / ``AutoModelForTokenClassification``;
  ``AutoModelForMaskedLM`` when pretraining), and its tokenizer (a fast one for token
  classification, whose labels follow the words).

Settings that need no data (``gate.metric`` vs ``data.task``, the source's file type vs the
task) are checked when the configuration loads (:mod:`components.config.task`).
"""

from __future__ import annotations

import json
from collections.abc import Collection, Sequence
from pathlib import Path
from typing import Any

from components.config import RatchetConfig
from components.errors import ConfigError, DataError
from components.state import ProjectPaths

TEXT_TASK = "text-classification"
TOKEN_TASK = "token-classification"
# The transformers Auto class each data.task fine-tunes.
TASK_MODEL_CLASSES = {
    TEXT_TASK: "AutoModelForSequenceClassification",
    TOKEN_TASK: "AutoModelForTokenClassification",
}
MODEL_STAGES = ("pretrain", "train")
PROBE_TEXT = "the film was good"  # words every real vocabulary knows


def preflight(
    config: RatchetConfig,
    paths: ProjectPaths,
    base_model: str,
    stages: Collection[str] = MODEL_STAGES,
    model_setting: str = "model.base",
) -> list[str]:
    """Check what the configuration and the prepared data allow before any training.

    Args:
        config: the run's settings.
        paths: the project's places (``data/prepared``, the root suites are found under).
        base_model: the model training starts from, resolved (a folder or a hub id).
        stages: the model stages about to run (``pretrain`` is checked only when enabled).
        model_setting: what names ``base_model`` in errors (``model.base``, ``--init``).

    Returns:
        Notices for the user (which behaviour suite runs, or why none).

    Raises:
        DataError: the prepared data is missing or stale (of another task or labels).
        ConfigError: a setting does not fit the data or the model; names the setting.
    """
    manifest = read_manifest(paths.prepared_dir)
    labels = check_prepared_data(config, manifest)
    notices = [
        behaviour_notice(config.eval.behaviour_checks, labels, paths.project_root, config.data.task)
    ]
    check_base_model(config, base_model, stages, model_setting)
    return notices


def read_manifest(prepared_dir: Path) -> dict[str, Any]:
    """``data/prepared/manifest.json``.

    Raises:
        DataError: there is none (the prepare stage has not run).
    """
    from components.prepare import MANIFEST_FILE

    path = prepared_dir / MANIFEST_FILE
    if not path.is_file():
        raise DataError(
            f"no prepared data at {prepared_dir}: run `ratchet prepare` (or `dvc repro prepare`)"
        )
    manifest: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return manifest


def check_prepared_data(config: RatchetConfig, manifest: dict[str, Any]) -> list[str]:
    """The prepared data's labels, once it is known to be of ``data.task`` and labels.

    Raises:
        DataError: ``data/prepared`` was made for another task or other labels.
    """
    prepared_task = manifest.get("task", TEXT_TASK)
    labels = list(manifest["labels"])
    if prepared_task != config.data.task:
        raise DataError(
            f"data/prepared holds {prepared_task} data, but data.task is "
            f"{config.data.task!r}: run `ratchet prepare` after changing data.task (or set "
            f"data.task: {prepared_task})"
        )
    if config.data.labels is not None and list(config.data.labels) != labels:
        raise DataError(
            f"data/prepared was made for labels {labels}, but data.labels is "
            f"{list(config.data.labels)}: run `ratchet prepare` after changing data.labels"
        )
    return labels


def behaviour_notice(
    setting: str | None,
    labels: Sequence[str],
    project_root: Path,
    task: str = "text-classification",
) -> str:
    """Resolve ``eval.behaviour_checks`` against the data's labels (a token classifier's
    tags: its NER suites) now, not at evaluation.

    Returns:
        Which suite will run, or why none (``auto`` with no suite for these labels).

    Raises:
        ConfigError: a suite named explicitly is missing, malformed or for other labels.
    """
    from components.behaviour import suite_for_labels
    from components.token_behaviour import token_suite_for_labels

    if task == "token-classification":
        return token_suite_for_labels(setting, labels, project_root)[1]
    return suite_for_labels(setting, labels, project_root)[1]


def check_base_model(
    config: RatchetConfig,
    base_model: str,
    stages: Collection[str] = MODEL_STAGES,
    model_setting: str = "model.base",
) -> None:
    """The model training starts from loads for what the run will do with it.

    Raises:
        ConfigError: its config or tokenizer does not load, or it cannot be built as the
            model class of ``data.task`` (or, when pretraining, of masked-LM); names
            ``model_setting`` and what to set instead.
    """
    model_config = load_model_config(base_model, model_setting)
    pretraining = "pretrain" in stages and config.pretrain.enabled
    if pretraining and config.pretrain.from_scratch:
        # Only the tokenizer is taken from the base: the model is a new BERT.
        check_tokenizer(config.data.task, base_model, model_setting)
        return
    wanted = [TASK_MODEL_CLASSES[config.data.task]]
    if pretraining:
        wanted.insert(0, "AutoModelForMaskedLM")
    for class_name in wanted:
        check_model_class(model_config, class_name, base_model, model_setting)
    if config.data.task == TEXT_TASK and config.model.pooling == "mean":
        from components.modeling import mean_pooling_problem

        problem = mean_pooling_problem(base_model, model_config.model_type)
        if problem:
            raise ConfigError(problem)
    check_tokenizer(config.data.task, base_model, model_setting)


def load_model_config(base_model: str, model_setting: str = "model.base") -> Any:
    """The model's ``AutoConfig``: from the folder, else the local hub cache, else the hub
    (reached once, without the minute of download retries an offline machine would wait).

    Raises:
        ConfigError: the folder's config does not load, or the hub id is neither cached
            nor reachable.
    """
    from transformers import AutoConfig

    if Path(base_model).is_dir():
        try:
            return AutoConfig.from_pretrained(base_model)
        except (OSError, ValueError) as error:
            raise ConfigError(
                f"{model_setting} {base_model} is not a loadable Hugging Face model folder "
                f"({first_line(error)}): point it at a save_pretrained output"
            ) from None
    try:
        return AutoConfig.from_pretrained(base_model, local_files_only=True)
    except (OSError, ValueError):
        pass  # not cached: ask the hub, once
    hub_problem = unreachable_hub_model(base_model)
    if hub_problem:
        raise ConfigError(
            f"{model_setting} {base_model!r} is a Hugging Face hub id that is not in the local "
            f"cache, and {hub_problem}: set {model_setting} to a local model folder "
            "(save_pretrained output), or to null for the shipped all-MiniLM-L6-v2, or load "
            "it once while online"
        )
    try:
        return AutoConfig.from_pretrained(base_model)
    except (OSError, ValueError) as error:
        raise ConfigError(
            f"{model_setting} {base_model!r} could not be loaded from the hub: {first_line(error)}"
        ) from None


def unreachable_hub_model(repo_id: str) -> str:
    """Why ``repo_id`` cannot be fetched from the hub now ("" when it can)."""
    from huggingface_hub import HfApi
    from huggingface_hub.constants import is_offline_mode

    if is_offline_mode():
        return "HF_HUB_OFFLINE is set"
    try:
        HfApi().model_info(repo_id, timeout=10)
    except Exception as error:  # network, name and auth failures come as unrelated types
        reason = f"{type(error).__name__}: {first_line(error)}"
        return f"the hub cannot be reached or does not have it ({reason})"
    return ""


def check_model_class(model_config: Any, class_name: str, base_model: str, setting: str) -> None:
    """Build the model class from ``model_config`` on the meta device (no weights).

    Raises:
        ConfigError: the architecture has no such model class.
    """
    import torch
    import transformers

    auto_class = getattr(transformers, class_name)
    try:
        with torch.device("meta"):
            auto_class.from_config(model_config)
    except ValueError as error:
        raise ConfigError(
            f"{setting} {base_model} is a {model_config.model_type!r} model, which "
            f"transformers cannot build as {class_name} ({first_line(error)}): choose a base "
            "model with that head (an encoder such as BERT or MiniLM)"
        ) from None


def check_tokenizer(task: str, base_model: str, setting: str) -> None:
    """The model's tokenizer loads and knows words; token classification needs a fast one
    (word ids).

    Raises:
        ConfigError: it does not load, knows no words, or is slow for token classification.
    """
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(base_model)
    except (OSError, ValueError, TypeError) as error:
        raise ConfigError(
            f"{setting} {base_model}: its tokenizer does not load ({first_line(error)}); "
            "the folder needs the tokenizer files save_pretrained writes"
        ) from None
    unknown = tokenizer.unk_token_id
    probe = tokenizer(PROBE_TEXT, add_special_tokens=False)["input_ids"]
    if unknown is not None and all(token == unknown for token in probe):
        # transformers builds an empty-vocabulary tokenizer from a folder without tokenizer
        # files rather than failing: every word would train as the unknown token.
        raise ConfigError(
            f"{setting} {base_model}: its tokenizer knows no words ({PROBE_TEXT!r} is all "
            f"{tokenizer.unk_token}); the folder needs the tokenizer files save_pretrained "
            "writes (tokenizer.json or vocab.txt)"
        )
    if task == TOKEN_TASK and not tokenizer.is_fast:
        raise ConfigError(
            f"{setting} {base_model} has only a slow tokenizer, but data.task "
            "token-classification labels each word's first sub-token, which needs a fast "
            "(Rust) tokenizer's word ids: choose a model that ships tokenizer.json"
        )


def first_line(error: BaseException) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0]
