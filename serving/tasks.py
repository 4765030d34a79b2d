"""Which Bento a registry version gets: its task, the model it holds, the runtime it runs.

A version's ``task`` tag (written at registration; none means ``text-classification``)
picks the service: the classifier (``serving/service.py``, ``POST /classify``) or the
tagger (``serving/token_service.py``, ``POST /entities``). ``serving/build.py`` checks the
downloaded model folder agrees before it stores anything, and ``serving/release.py`` checks
the built Bento with the task's own probe.
"""

from __future__ import annotations

import json
from pathlib import Path

from components.config import RatchetConfig
from components.errors import ServingError

TASK_TAG = "task"  # set on a registry version at registration; absent: text-classification
TEXT_TASK, TOKEN_TASK = "text-classification", "token-classification"
SERVICES = {
    TEXT_TASK: "serving.service:RatchetClassifier",
    TOKEN_TASK: "serving.token_service:RatchetTagger",
}
TORCH_ONLY_FALLBACK = (
    "serving.runtime {runtime} is exported for sequence classifiers only: "
    "this token classifier is served by torch"
)


def version_task(tags: dict[str, str]) -> str:
    """The task of a registry version, from its ``task`` tag (none: text-classification).

    Raises:
        ServingError: the tag names a task no Bento serves.
    """
    task = tags.get(TASK_TAG) or TEXT_TASK
    if task not in SERVICES:
        raise ServingError(
            f"the registry version is tagged {TASK_TAG}={task!r}; Ratchet serves {sorted(SERVICES)}"
        )
    return task


def check_model_task(hf_dir: Path, task: str) -> None:
    """The model folder's config must be the head the version's task says.

    Raises:
        ServingError: a token classifier tagged (or left untagged) as a text classifier,
            or the other way round; names the tag to fix.
    """
    config = json.loads((hf_dir / "config.json").read_text(encoding="utf-8"))
    architectures = list(config.get("architectures") or [])
    is_tagger = any(name.endswith("ForTokenClassification") for name in architectures)
    if is_tagger != (task == TOKEN_TASK):
        raise ServingError(
            f"the registry version's task is {task!r} (tag {TASK_TAG}; none means "
            f"{TEXT_TASK}) but its model is a {', '.join(architectures) or 'model'}: "
            f"tag the version {TASK_TAG}={TOKEN_TASK if is_tagger else TEXT_TASK}"
        )
    if is_tagger and not config.get("id2label"):
        raise ServingError(f"the token classifier in {hf_dir} has no id2label (its tag set)")


def served_runtime(config: RatchetConfig, task: str) -> str:
    """The runtime a Bento of ``task`` runs: ``serving.runtime``, torch for a tagger."""
    return config.serving.runtime if task == TEXT_TASK else "torch"


def runtime_labels(config: RatchetConfig, task: str) -> dict[str, str]:
    """``runtime.fallback`` (why) when the Bento does not run ``serving.runtime``."""
    if served_runtime(config, task) == config.serving.runtime:
        return {}
    return {"runtime.fallback": TORCH_ONLY_FALLBACK.format(runtime=config.serving.runtime)}
