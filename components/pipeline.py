"""The pipeline, declared once: its stages, their inputs, outputs and cache keys.

    ratchet pipeline dvc-yaml           # write dvc.yaml from this declaration
    ratchet pipeline dvc-yaml --check   # fail when dvc.yaml differs from it

Everything that runs the pipeline reads :data:`PIPELINE` instead of knowing the stages
itself: ``dvc.yaml`` is generated from it (:func:`render_dvc_yaml`), the retrain flow
takes its data stages, the lineage md5s and the training steps' cache keys from it
(``flows/caches.py``), and ``ratchet reproduce`` rebuilds the model stages in its order
from the data outputs they depend on. The stage functions themselves live in their own
modules (``components/ingest.py`` ... ``components/evaluate.py``), Kedro-style: plain
functions there, the wiring here.

A second pipeline (another model folder with its own ``params.yaml``) is rendered by
:func:`render_dvc_yaml` with ``code_root`` pointing back at the project's sources.
"""

from __future__ import annotations

import hashlib
import json
import posixpath
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

OutKind = Literal["outs", "metrics", "plots"]
StageGroup = Literal["data", "model", "evaluation"]


@dataclass(frozen=True)
class Dep:
    """A path a stage reads (data, a model folder, a source file, a config folder)."""

    path: str
    note: str = ""  # rendered as a trailing comment in dvc.yaml

    @property
    def is_code(self) -> bool:
        return self.path.startswith(("components/", "configs/"))


@dataclass(frozen=True)
class Param:
    """A ``params.yaml`` key (a whole section or a dotted key) a stage depends on."""

    key: str
    note: str = ""


@dataclass(frozen=True)
class Out:
    """A path a stage writes.

    Attributes:
        kind: ``outs`` (cached by DVC), ``metrics`` or ``plots``.
        persist: DVC leaves the previous copy in place while the command runs.
        cache: DVC keeps a copy in its cache (metrics and plots: no).
        lineage_tag: the registry tag that records this output's DVC md5.
    """

    path: str
    kind: OutKind = "outs"
    persist: bool = False
    cache: bool = True
    note: str = ""
    lineage_tag: str = ""


@dataclass(frozen=True)
class Stage:
    """One stage: its command, what it reads and writes, and how its cache key is made.

    Attributes:
        group: ``data`` stages are versioned together (the flow commits and pushes their
            outputs), ``model`` stages are cached on a key, ``evaluation`` scores.
        enabled_by: a boolean params key; when false the flow and ``reproduce`` skip
            the stage and its dependants start from the base model (DVC still runs it:
            ``ratchet pretrain`` then copies the base).
        fingerprinted: params keys listing files outside the repository whose bytes
            enter the stage's cache key (DVC does not hash them).
    """

    name: str
    cmd: str
    group: StageGroup
    deps: tuple[Dep, ...]
    params: tuple[Param, ...]
    outs: tuple[Out, ...]
    comment: tuple[str, ...] = ()
    enabled_by: str | None = None
    fingerprinted: tuple[str, ...] = ()

    @property
    def param_keys(self) -> tuple[str, ...]:
        return tuple(param.key for param in self.params)

    @property
    def model_output(self) -> str:
        """The first output DVC caches (a model stage's model folder)."""
        return next(out.path for out in self.outs if out.kind == "outs")


@dataclass(frozen=True)
class Pipeline:
    """Stages in the order they run, and the header comment of their ``dvc.yaml``."""

    stages: tuple[Stage, ...]
    header: tuple[str, ...] = field(default=())

    def stage(self, name: str) -> Stage:
        for stage in self.stages:
            if stage.name == name:
                return stage
        raise KeyError(f"no stage {name!r}; the stages are {self.names()}")

    def names(self, group: StageGroup | None = None) -> list[str]:
        return [stage.name for stage in self.stages if group in (None, stage.group)]

    def group(self, group: StageGroup) -> list[Stage]:
        return [stage for stage in self.stages if stage.group == group]

    def producer(self, path: str) -> Stage | None:
        """The stage whose output ``path`` is (None for a source or code file)."""
        return next((s for s in self.stages if any(o.path == path for o in s.outs)), None)

    def cached_data_stages(self) -> list[str]:
        """Data stages with an output in DVC's cache (what push and pull move)."""
        return [
            stage.name
            for stage in self.group("data")
            if any(out.kind == "outs" and out.cache for out in stage.outs)
        ]

    def lineage_outputs(self) -> dict[str, str]:
        """``lineage tag -> output path`` of the outputs whose md5 the lineage records."""
        return {
            out.lineage_tag: out.path
            for stage in self.stages
            for out in stage.outs
            if out.lineage_tag
        }

    def data_inputs(self, stage: Stage) -> list[Out]:
        """The data-stage outputs ``stage`` reads (e.g. ``data/prepared``)."""
        outputs = []
        for dep in stage.deps:
            producer = self.producer(dep.path)
            if producer is not None and producer.group == "data":
                outputs += [out for out in producer.outs if out.path == dep.path]
        return outputs

    def upstream_model(self, stage: Stage) -> Stage | None:
        """The model stage whose output ``stage`` starts from (None: the base model)."""
        for dep in stage.deps:
            producer = self.producer(dep.path)
            if producer is not None and producer.group == "model":
                return producer
        return None


def reads(*paths: str) -> tuple[Dep, ...]:
    """Data, model or metrics paths as dependencies."""
    return tuple(Dep(path) for path in paths)


def code(*modules: str) -> tuple[Dep, ...]:
    """Source files under ``components/`` as dependencies."""
    return tuple(Dep(f"components/{module}") for module in modules)


def keys(*names: str) -> tuple[Param, ...]:
    return tuple(Param(name) for name in names)


def data_output(path: str, lineage_tag: str, note: str) -> Out:
    """A data folder DVC versions: kept while the command runs, its md5 in the lineage."""
    return Out(path, persist=True, note=note, lineage_tag=lineage_tag)


# The training runtime both training stages run on, in the order dvc.yaml lists it.
TRAINING_RUNTIME = code(
    "training/__init__.py",
    "training/runtime.py",
    "training/batching.py",
    "training/optimization.py",
    "training/checkpoints.py",
    "training/resume.py",
    "training/loop.py",
    "kernels/__init__.py",
    "kernels/cpu_speedups.py",
    "files.py",
    "hardware.py",
)
# The data keys every stage after ingest reads the snapshot with.
DATA_READING = keys(
    "data.task",
    "data.repair_iob1",
    "data.text_column",
    "data.label_column",
    "data.labels",
    "data.label_aliases",
    "data.slice_columns",
    "data.max_rows",
)

INGEST = Stage(
    name="ingest",
    cmd="ratchet ingest",
    group="data",
    comment=(
        "Byte-for-byte snapshot of data.source: dvc.lock records the source path, its md5",
        "and the snapshot's md5 (hf: sources need `ratchet ingest` + `dvc commit ingest`).",
    ),
    deps=(Dep("${data.source}"), *code("ingest.py", "data_files.py", "token_data.py")),
    params=keys("data.source", "data.task"),
    outs=(
        data_output(
            "data/raw", "raw_data_md5", "replaced atomically by the command, never deleted up front"
        ),
    ),
)
VALIDATE = Stage(
    name="validate",
    cmd="ratchet validate --data data/raw --report metrics/data_validation.json",
    group="data",
    deps=(
        Dep("data/raw"),
        *code(
            "ingest.py",
            "data_files.py",
            "validate.py",
            "validation_report.py",
            "token_data.py",
            "token_validate.py",
        ),
    ),
    params=(*DATA_READING, Param("data.checks")),
    outs=(Out("metrics/data_validation.json", kind="metrics", cache=False),),
)
PREPARE = Stage(
    name="prepare",
    cmd="ratchet prepare --data data/raw --skip-validation",
    group="data",
    comment=("The validate stage already gated these bytes (its report is a dependency).",),
    deps=(
        *reads("data/raw", "metrics/data_validation.json"),
        *code("ingest.py", "data_files.py", "prepare.py", "token_data.py", "token_prepare.py"),
        Dep("components/validate.py", "normalise_text keys the split hash"),
    ),
    params=(*DATA_READING, Param("data.split")),
    outs=(
        data_output(
            "data/prepared",
            "prepared_data_md5",
            "a failed run must leave the previous splits in place",
        ),
    ),
)
PRETRAIN = Stage(
    name="pretrain",
    cmd="ratchet pretrain",
    group="model",
    comment=(
        "pretrain.extra_corpora is a params key, so changing the list reruns this stage; the",
        "corpora's bytes are read from outside the repo and are not hashed by DVC (the",
        "checkpoint key and the flow's cache key hash them). Corpus lines that repeat a",
        "validation or test text are left out (validate.py's normalise_text compares them).",
    ),
    deps=(
        Dep("data/prepared"),
        *code("pretrain.py", "pretrain_corpus.py", "masked_lm.py", "token_prepare.py"),
        *TRAINING_RUNTIME,
        *code("base_model.py", "fingerprints.py", "validate.py"),
    ),
    params=keys(
        "pretrain",
        "model",
        "train.precision",
        "train.deterministic",
        "train.compile",
        "train.cpu_speedups",
        "train.num_threads",
        "train.checkpoint_every_steps",
        "train.checkpoint_every_minutes",
    ),
    outs=(Out("models/pretrained"), Out("metrics/pretrain.json", kind="metrics", cache=False)),
    enabled_by="pretrain.enabled",
    fingerprinted=("pretrain.extra_corpora",),
)
TRAIN = Stage(
    name="train",
    cmd="ratchet train",
    group="model",
    deps=(
        *reads("data/prepared", "models/pretrained"),
        *code("finetune.py", "finetune_run.py", "model_surgery.py", "soup.py", "modeling.py"),
        *code("kernels/first_position.py", "token_finetune.py", "token_prepare.py"),
        *TRAINING_RUNTIME,
        *code("fingerprints.py"),
    ),
    params=keys("train", "model"),  # data.task: data/prepared's md5 follows it
    outs=(Out("models/finetuned"), Out("metrics/train.json", kind="metrics", cache=False)),
)
EVALUATE = Stage(
    name="evaluate",
    cmd="ratchet evaluate",
    group="evaluation",
    deps=(
        *reads("models/finetuned", "data/prepared"),
        *code("evaluate.py", "evaluation_plots.py", "truncation.py", "behaviour.py"),
        *code("token_evaluate.py", "text_features.py", "monitoring_reference.py"),
        *code("modeling.py", "kernels/__init__.py", "kernels/first_position.py", "hardware.py"),
        Dep("configs/behaviour", "the suites eval.behaviour_checks names"),
    ),
    params=(
        Param("eval"),
        Param("model.max_length"),
        Param("serving.precision", "the model is evaluated at the precision it is served with"),
    ),
    outs=(
        Out("metrics/eval.json", kind="metrics", cache=False),
        Out("metrics/confusion_matrix.png", kind="plots", cache=False),
        Out("metrics/reliability_diagram.png", kind="plots", cache=False),
    ),
)

PIPELINE = Pipeline(
    stages=(INGEST, VALIDATE, PREPARE, PRETRAIN, TRAIN, EVALUATE),
    header=(
        "Ratchet pipeline. `dvc repro` runs it (with .venv/bin on PATH, so `ratchet` resolves);",
        "every stage reads params.yaml and lists exactly the keys it depends on, so changing",
        "a data param reruns only the stages below it. Outputs are pushed to the DVC remote",
        "(`ratchet data push`; default: the state folder's dvc-remote, see .dvc/config).",
        "",
        "When pretrain.enabled is false, `ratchet pretrain` still writes models/pretrained (a",
        "copy of the base model), so the train stage's dependency always exists.",
        "",
        "Generated from components/pipeline.py by `ratchet pipeline dvc-yaml`: change the",
        "stages there (tests/code/test_pipeline.py fails when this file differs).",
    ),
)


def render_dvc_yaml(pipeline: Pipeline = PIPELINE, code_root: str = ".") -> str:
    """The ``dvc.yaml`` text of ``pipeline``, comments included.

    Args:
        pipeline: the declaration.
        code_root: the project root as seen from the folder the ``dvc.yaml`` goes to
            (``"."`` for the project's own; ``"../.."`` for ``models/<name>/dvc.yaml``),
            so the source files a stage depends on are still found.
    """
    lines = [f"# {line}".rstrip() for line in pipeline.header]
    lines.append("stages:")
    for stage in pipeline.stages:
        lines += render_stage(stage, code_root)
    return "\n".join(lines) + "\n"


def render_stage(stage: Stage, code_root: str) -> list[str]:
    lines = [f"  {stage.name}:"]
    lines += [f"    # {line}".rstrip() for line in stage.comment]
    lines.append(f"    cmd: {stage.cmd}")
    deps = [
        (relocated(dep.path, code_root) if dep.is_code else dep.path, dep.note)
        for dep in stage.deps
    ]
    lines += render_list("deps", deps)
    lines += render_list("params", [(param.key, param.note) for param in stage.params])
    for kind in ("outs", "metrics", "plots"):
        outs = [out for out in stage.outs if out.kind == kind]
        if outs:
            lines.append(f"    {kind}:")
            lines += [line for out in outs for line in render_out(out)]
    return lines


def render_list(name: str, entries: Sequence[tuple[str, str]]) -> list[str]:
    lines = [f"    {name}:"] if entries else []
    return lines + [f"      - {value}{trailing(note)}" for value, note in entries]


def render_out(out: Out) -> list[str]:
    options = []
    if out.persist:
        options.append(f"persist: true{trailing(out.note)}")
    if not out.cache:
        options.append(f"cache: false{trailing(out.note)}")
    if not options:
        return [f"      - {out.path}{trailing(out.note)}"]
    return [f"      - {out.path}:"] + [f"          {option}" for option in options]


def trailing(note: str) -> str:
    return f"  # {note}" if note else ""


def relocated(path: str, code_root: str) -> str:
    return path if code_root in ("", ".") else posixpath.join(code_root, path)


def param_values(config: Any, param_keys: Iterable[str]) -> dict[str, Any]:
    """The values of ``param_keys`` (sections or dotted keys) nested as in params.yaml."""
    dumped = config.model_dump(mode="json")
    chosen: dict[str, Any] = {}
    for key in param_keys:
        *parents, last = key.split(".")
        source, target = dumped, chosen
        for part in parents:
            source, target = source[part], target.setdefault(part, {})
        target[last] = source[last]
    return chosen


def params_hash(config: Any, stage: Stage) -> str:
    """Short stable hash of the values of the params keys ``stage`` depends on (for a
    stage that reads whole sections, the same as ``config.section_hash`` of them)."""
    payload = json.dumps(param_values(config, stage.param_keys), sort_keys=True).encode()
    return hashlib.sha256(payload).hexdigest()[:16]


def param_value(config: Any, key: str) -> Any:
    """The value of a dotted params key, e.g. ``pretrain.enabled``."""
    value = config
    for part in key.split("."):
        value = getattr(value, part)
    return value


def is_enabled(config: Any, stage: Stage) -> bool:
    """Whether the flow and ``reproduce`` run ``stage`` under ``config``."""
    return stage.enabled_by is None or bool(param_value(config, stage.enabled_by))


def dvc_yaml_difference(path: Path, pipeline: Pipeline = PIPELINE, code_root: str = ".") -> str:
    """How ``path`` differs from the ``dvc.yaml`` of ``pipeline`` ("" when it does not):
    the first differing line, as ``line N: has '...', the declaration gives '...'``."""
    if not path.is_file():
        return f"{path} does not exist"
    expected = render_dvc_yaml(pipeline, code_root).splitlines()
    actual = path.read_text(encoding="utf-8").splitlines()
    for number, (have, want) in enumerate(zip(actual, expected, strict=False), start=1):
        if have != want:
            return f"line {number}: has {have!r}, the declaration gives {want!r}"
    if len(actual) != len(expected):
        return f"{path} has {len(actual)} lines, the declaration gives {len(expected)}"
    return ""


def check_dvc_yaml(path: Path, pipeline: Pipeline = PIPELINE, code_root: str = ".") -> None:
    """Raise ``ConfigError`` when ``path`` is not the ``dvc.yaml`` of ``pipeline``."""
    from components.errors import ConfigError

    difference = dvc_yaml_difference(path, pipeline, code_root)
    if difference:
        raise ConfigError(
            f"{path} differs from the pipeline declared in components/pipeline.py "
            f"({difference}); run `ratchet pipeline dvc-yaml` to regenerate it"
        )


def write_dvc_yaml(path: Path, pipeline: Pipeline = PIPELINE, code_root: str = ".") -> bool:
    """Write the ``dvc.yaml`` of ``pipeline`` to ``path``; False when it was up to date."""
    from components.files import write_atomically

    if not dvc_yaml_difference(path, pipeline, code_root):
        return False
    write_atomically(path, render_dvc_yaml(pipeline, code_root))
    return True
