"""The models of one project: the default model and one folder per further model.

    ratchet new conll --task token-classification --data ../shared/data/conll2003
    ratchet --model conll retrain
    ratchet models

The project root's ``params.yaml`` and ``dvc.yaml`` are the default model (``default``).
Each further model lives in ``pipelines/<name>/``: its own complete ``params.yaml`` (DVC
reads the stage params there), a ``dvc.yaml`` generated from the one pipeline declaration
with its source dependencies pointing back at the project (``components/pipeline.py``),
and, once run, its own ``dvc.lock``, ``data/``, ``models/`` and ``metrics/``. Every model
shares the project's state folder (one MLflow store, where each has its own registered
name, one BentoML store, one DVC remote, the content-keyed step caches). See
docs/models.md.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import yaml

from components.config import (
    DEFAULT_PARAMS_FILE,
    RatchetConfig,
    Task,
    config_from_mapping,
    deep_merge,
    load_config,
    merged_mapping,
    read_yaml_mapping,
)
from components.errors import ConfigError
from components.state import DEFAULT_MODEL, MODELS_DIR_NAME, ProjectPaths, project_of

# A model's name is a folder name, the default registered name's suffix (ratchet-NAME)
# and so part of its Bento's name: lower-case letters, digits, - and _.
MODEL_NAME_PATTERN = re.compile(r"^[a-z][a-z0-9_-]{0,39}$")
REGISTERED_NAME_PREFIX = "ratchet-"
HF_PREFIX = "hf:"


@dataclass(frozen=True)
class ModelEntry:
    """One model of the project, as its params file declares it."""

    name: str
    params_file: Path
    task: str
    registered_name: str


def project_root_of(params_file: Path) -> Path:
    """The project a ``params.yaml`` belongs to (its folder, or the project above a
    ``pipelines/<name>/`` folder)."""
    return project_of(params_file.resolve().parent)[0]


def model_params_file(project_params: Path, name: str | None) -> Path:
    """The ``params.yaml`` of model ``name`` of the project ``project_params`` is in.

    Args:
        project_params: the default model's params (``--params``, default params.yaml).
        name: ``--model``; None or ``default`` is the default model.

    Raises:
        ConfigError: the project has no model ``name``; the message lists its models.
    """
    if name is None or name == DEFAULT_MODEL:
        return project_params
    root = project_root_of(project_params)
    params_file = root / MODELS_DIR_NAME / name / DEFAULT_PARAMS_FILE
    if MODEL_NAME_PATTERN.match(name) and params_file.is_file():
        return params_file
    raise ConfigError(
        f"--model {name}: the project {root} has no model {name!r} "
        f"(no {MODELS_DIR_NAME}/{name}/{DEFAULT_PARAMS_FILE}); its models are "
        f"{', '.join(model_names(root))}. Add one with `ratchet new {name} --task "
        "text-classification|token-classification --data PATH`"
    )


def model_names(project_root: Path) -> list[str]:
    """``default`` (when the root has a params.yaml), then the model folders, sorted."""
    names = [DEFAULT_MODEL] if (project_root / DEFAULT_PARAMS_FILE).is_file() else []
    folder = project_root / MODELS_DIR_NAME
    if folder.is_dir():
        names += sorted(
            entry.name
            for entry in folder.iterdir()
            if MODEL_NAME_PATTERN.match(entry.name) and (entry / DEFAULT_PARAMS_FILE).is_file()
        )
    return names


def params_file_of(project_root: Path, name: str) -> Path:
    if name == DEFAULT_MODEL:
        return project_root / DEFAULT_PARAMS_FILE
    return project_root / MODELS_DIR_NAME / name / DEFAULT_PARAMS_FILE


def list_models(project_root: Path) -> list[ModelEntry]:
    """Every model of the project with its task and registered name.

    Raises:
        ConfigError: a model's params file is invalid (the message names the key).
    """
    entries = []
    for name in model_names(project_root):
        params_file = params_file_of(project_root, name)
        try:
            config = load_config(params_file)
        except ConfigError as error:
            raise ConfigError(f"model {name} ({params_file}): {error}") from error
        entries.append(ModelEntry(name, params_file, config.data.task, config.registry.model_name))
    return entries


def model_folders(project_root: Path) -> list[Path]:
    """The folder of every model (the project root first), for their ``dvc.yaml``s."""
    return [params_file_of(project_root, name).parent for name in model_names(project_root)]


def check_model_name(name: str) -> None:
    """Raise ``ConfigError`` unless ``name`` can name a model folder and registered model."""
    if name == DEFAULT_MODEL:
        raise ConfigError(
            f"model name {name!r} is taken by the project's root params.yaml: choose another"
        )
    if not MODEL_NAME_PATTERN.match(name):
        raise ConfigError(
            f"model name {name!r}: use 1-40 lower-case letters, digits, '-' or '_', "
            "starting with a letter (it names pipelines/NAME/ and the registered model "
            f"{REGISTERED_NAME_PREFIX}NAME)"
        )


@dataclass(frozen=True)
class NewModel:
    """What ``ratchet new`` was asked for.

    Attributes:
        data: ``--data`` as typed: a path relative to ``cwd`` or absolute, or ``hf:...``.
        cwd: the folder the command runs in (relative ``data`` is taken from there).
    """

    name: str
    task: Task
    data: str
    cwd: Path
    text_column: str | None = None
    label_column: str | None = None
    base: str | None = None


def data_source_paths(request: NewModel, model_folder: Path) -> tuple[str, str]:
    """``(data.source as written in the model's params, the path to read now)``.

    A relative ``--data`` is taken from where the command runs and written relative to
    the model's folder (where DVC and Ratchet read it); an absolute one stays absolute.

    Raises:
        ConfigError: the path does not exist.
    """
    if request.data.startswith(HF_PREFIX):
        return request.data, request.data
    given = Path(request.data).expanduser()
    absolute = Path(os.path.abspath(request.cwd / given))
    if not absolute.exists():
        raise ConfigError(
            f"--data {request.data}: {absolute} does not exist (a relative path is taken "
            f"from the folder you run the command in, {request.cwd})"
        )
    written = str(absolute) if given.is_absolute() else os.path.relpath(absolute, model_folder)
    return written, str(absolute)


def free_serving_port(project_root: Path) -> int:
    """One above the highest ``serving.port`` of the project's models, so every model's
    Bento can serve at once without a ``--set serving.port``."""
    return 1 + max(
        (read_yaml_mapping(params_file_of(project_root, name)).get("serving") or {}).get(
            "port", 3000
        )
        for name in model_names(project_root)
    )


def task_defaults(request: NewModel, source: str, port: int) -> dict[str, Any]:
    """The settings a new model of ``request.task`` starts from, over the project's
    params.yaml: its data, registered name, serving port, and nothing of the default
    model's data set (labels, slices, extra pretraining corpora belong to that data)."""
    data: dict[str, Any] = {
        "task": request.task,
        "source": source,
        "labels": None,
        "label_aliases": {},
        "slice_columns": [],
    }
    if request.text_column:
        data["text_column"] = request.text_column
    if request.label_column:
        data["label_column"] = request.label_column
    token = request.task == "token-classification"
    defaults: dict[str, Any] = {
        "data": data,
        "pretrain": {"extra_corpora": []},
        "gate": {"metric": "entity_f1" if token else "f1_macro"},
        "registry": {"model_name": f"{REGISTERED_NAME_PREFIX}{request.name}"},
        "serving": {"port": port},
    }
    if token:
        defaults["model"] = {"pooling": "cls"}
    if request.base:
        defaults.setdefault("model", {})["base"] = request.base
    return defaults


def new_model_params(
    project_params: Path,
    request: NewModel,
    source: str,
    config_files: Sequence[Path] = (),
    overrides: Sequence[str] = (),
) -> tuple[dict[str, Any], RatchetConfig]:
    """The complete parameters of a new model: the project's params.yaml, then the task's
    defaults (:func:`task_defaults`), then ``--config`` files and ``--set`` overrides,
    then the data source, columns and base model named on ``ratchet new``'s options.

    Returns:
        The mapping to write (every key; secrets as the project's file has them) and the
        configuration it loads as.

    Raises:
        ConfigError: a setting is invalid or does not fit the task.
    """
    port = free_serving_port(project_root_of(project_params))
    defaults = task_defaults(request, source, port)
    raw = deep_merge(read_yaml_mapping(project_params), defaults)
    raw["data"]["label_aliases"] = {}  # the default model's aliases: its data set's
    raw = merged_mapping(raw, config_files, overrides)
    raw = deep_merge(raw, chosen_on_the_command_line(defaults))
    config = config_from_mapping(raw)
    return deep_merge(config.model_dump(mode="json"), raw), config


def chosen_on_the_command_line(defaults: dict[str, Any]) -> dict[str, Any]:
    """The part of the task's defaults that ``ratchet new``'s own options set (task, data
    source, columns, base model): they win over profiles and ``--set``."""
    data = defaults["data"]
    named = ("task", "source", "text_column", "label_column")
    chosen: dict[str, Any] = {"data": {key: data[key] for key in named if key in data}}
    base = defaults.get("model", {}).get("base")
    if base:
        chosen["model"] = {"base": base}
    return chosen


PARAMS_HEADER = """\
# Parameters of the model {name} ({task}), written by `ratchet new {name}`.
# DVC reads the stage params of this folder's dvc.yaml here; `ratchet --model {name} ...`
# loads them. Relative data paths (data.source, pretrain.extra_corpora) are taken from
# this folder, other paths (model.base, eval.behaviour_checks) from the project root.
"""


@dataclass(frozen=True)
class CreatedModel:
    """A model ``ratchet new`` wrote: its paths, configuration and validation result."""

    paths: ProjectPaths
    config: RatchetConfig
    validation: Any


def create_model(
    project_params: Path,
    request: NewModel,
    config_files: Sequence[Path] = (),
    overrides: Sequence[str] = (),
    force: bool = False,
) -> CreatedModel:
    """Write ``pipelines/<name>/`` (params.yaml, dvc.yaml) after validating its data once.

    The files are written to a hidden folder beside it first and moved in only once the
    data passed validation, so a failure leaves nothing behind. With ``force`` an
    existing model's params.yaml and dvc.yaml are replaced (its data, models, metrics and
    dvc.lock stay).

    Raises:
        ConfigError: a bad or taken name, a missing data path, an invalid setting.
        DataValidationError, DataError: the data fails validation or cannot be read.
    """
    from components.pipeline import render_dvc_yaml

    check_model_name(request.name)
    root = project_root_of(project_params)
    folder = root / MODELS_DIR_NAME / request.name
    if folder.exists() and not force:
        raise ConfigError(
            f"model {request.name!r} exists ({folder}): choose another name, or pass "
            "--force to rewrite its params.yaml and dvc.yaml"
        )
    source, readable = data_source_paths(request, folder)
    mapping, config = new_model_params(project_params, request, source, config_files, overrides)
    paths = replace(ProjectPaths.discover(root), model_folder=folder)
    models_dir = root / MODELS_DIR_NAME
    created_models_dir = not models_dir.exists()
    models_dir.mkdir(exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".new-{request.name}-", dir=models_dir))
    staging.chmod(models_dir.stat().st_mode & 0o777)  # mkdtemp's 0700 would stay
    try:
        header = PARAMS_HEADER.format(name=request.name, task=request.task)
        (staging / DEFAULT_PARAMS_FILE).write_text(
            header + yaml.safe_dump(mapping, sort_keys=False), encoding="utf-8"
        )
        code_root = Path(os.path.relpath(root, folder)).as_posix()
        (staging / "dvc.yaml").write_text(render_dvc_yaml(code_root=code_root), encoding="utf-8")
        write_gitignores(root, staging)
        validation = validate_with_hint(readable, config, paths)
        move_into_place(staging, folder)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        if created_models_dir and not any(models_dir.iterdir()):
            models_dir.rmdir()
    return CreatedModel(paths, config, validation)


def validate_with_hint(source: str, config: RatchetConfig, paths: ProjectPaths) -> Any:
    """:func:`validate_once`; a failure says that nothing was written and how to go on.

    Raises:
        DataValidationError: the data fails a check.
    """
    from components.errors import DataValidationError

    try:
        return validate_once(source, config, paths)
    except DataValidationError as error:
        raise DataValidationError(
            f"{error}\nNothing was written. Fix the data, or relax the check for this "
            "model: `ratchet new` writes --set data.checks.KEY=VALUE (or a --config "
            "profile's values) into the model's params.yaml",
            error.failures,
        ) from error


def validate_once(source: str, config: RatchetConfig, paths: ProjectPaths) -> Any:
    """Run the data suite of ``config.data.task`` on ``source`` (``ratchet validate``'s)."""
    if config.data.task == "token-classification":
        from components.token_validate import run_token_validation

        return run_token_validation(source, config, paths, None)
    from components.validate import run_validation

    return run_validation(source, config.data, paths, None)


def write_gitignores(project_root: Path, folder: Path) -> None:
    """What git leaves out of a model's folder, as at the project root: the model
    folders DVC caches, and what ``data/.gitignore`` lists (a copy of the project's)."""
    (folder / ".gitignore").write_text(
        "# the model folders DVC caches (models/pretrained, models/finetuned)\n/models/\n",
        encoding="utf-8",
    )
    project_data_ignores = project_root / "data" / ".gitignore"
    if project_data_ignores.is_file():
        (folder / "data").mkdir()
        shutil.copyfile(project_data_ignores, folder / "data" / ".gitignore")


def move_into_place(staging: Path, folder: Path) -> None:
    """Rename ``staging`` to ``folder``, or, when ``folder`` exists, replace its files
    with ``staging``'s one by one (each replacement atomic; what else it holds stays)."""
    if not folder.exists():
        os.replace(staging, folder)
        return
    for entry in sorted(staging.iterdir()):
        if entry.is_dir() and (folder / entry.name).is_dir():
            move_into_place(entry, folder / entry.name)
        else:
            os.replace(entry, folder / entry.name)
