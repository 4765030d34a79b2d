"""Behavioural checks in the spirit of CheckList (Ribeiro et al., 2020), declared in YAML.

A suite file (one per task, e.g. ``configs/behaviour/sentiment-en.yaml``) lists checks of
three kinds:

- ``MFT`` (minimum functionality): each text must get ``expect_label``.
- ``INV`` (invariance): each ``[original, perturbed]`` pair must keep its predicted label
  (names swapped, typos added).
- ``DIR`` (directional): in each ``[original, changed]`` pair the probability of
  ``target_label`` must move in ``direction`` by more than ``margin`` (negation lowers
  "positive").

Running a suite needs only a ``predict_proba(texts) -> (n, classes) array``, so the checks
are testable without a model. A check may carry ``min_pass_rate``; the promotion gate then
refuses a model whose pass rate falls below it.

``eval.behaviour_checks: auto`` (the default) picks the shipped suite (``configs/behaviour``)
whose labels are the data's (:func:`choose_behaviour_suite`, pure; suites declaring ``task:
token-classification`` are NER suites, run by ``components/token_behaviour.py``); a suite named
explicitly must match the data's labels too, and the retrain flow checks that before it
trains (:func:`suite_for_labels`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol, TypeVar

import numpy as np
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from components.errors import ConfigError

PredictProba = Callable[[list[str]], np.ndarray]


class LabelledSuite(Protocol):
    @property
    def labels(self) -> list[str]: ...


SuiteT = TypeVar("SuiteT", bound=LabelledSuite)
MAX_FAILURES_KEPT = 5
AUTO = "auto"
SHIPPED_SUITES_DIR = "configs/behaviour"
TOKEN_SUITE_TASK = "token-classification"  # NER suites (components/token_behaviour.py)


class BehaviourCheck(BaseModel):
    """One declared check; which fields apply depends on ``type``."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(min_length=1, description="Unique name, used in metrics keys.")
    type: Literal["MFT", "INV", "DIR"] = Field(description="CheckList test type.")
    capability: str = Field("general", description="Capability tested (vocabulary, negation).")
    description: str = Field("", description="What the check shows when it fails.")
    texts: list[str] = Field(default_factory=list, description="MFT inputs.")
    expect_label: str | None = Field(None, description="MFT: the label every text must get.")
    pairs: list[tuple[str, str]] = Field(
        default_factory=list, description="INV/DIR: [original, changed] text pairs."
    )
    target_label: str | None = Field(None, description="DIR: the label whose probability moves.")
    direction: Literal["increase", "decrease"] | None = Field(None, description="DIR direction.")
    margin: float = Field(0.0, ge=0, le=1, description="DIR: least change that counts.")
    min_pass_rate: float | None = Field(
        None, ge=0, le=1, description="Gate condition: refuse promotion below this pass rate."
    )

    @model_validator(mode="after")
    def _fields_for_type(self) -> BehaviourCheck:
        if self.type == "MFT" and (not self.texts or self.expect_label is None):
            raise ValueError(f"MFT check {self.name!r} needs texts and expect_label")
        if self.type in ("INV", "DIR") and not self.pairs:
            raise ValueError(f"{self.type} check {self.name!r} needs pairs")
        if self.type == "DIR" and (self.target_label is None or self.direction is None):
            raise ValueError(f"DIR check {self.name!r} needs target_label and direction")
        return self


class BehaviourSuite(BaseModel):
    """A task's checks and the class names they refer to."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    task: str = Field("", description="Task the suite is written for.")
    labels: list[str] = Field(min_length=2, description="Class names in id order.")
    checks: list[BehaviourCheck] = Field(min_length=1)

    @model_validator(mode="after")
    def _names_and_labels_known(self) -> BehaviourSuite:
        names = [check.name for check in self.checks]
        if len(set(names)) != len(names):
            raise ValueError(f"check names repeat: {names}")
        for check in self.checks:
            for label in (check.expect_label, check.target_label):
                if label is not None and label not in self.labels:
                    raise ValueError(f"check {check.name!r} names unknown label {label!r}")
        return self


@dataclass(frozen=True)
class CheckResult:
    """Outcome of one check: how many cases passed, and a few that failed."""

    name: str
    type: str
    capability: str
    cases: int
    passed: int
    min_pass_rate: float | None = None
    failures: list[dict[str, Any]] = field(default_factory=list)

    @property
    def pass_rate(self) -> float:
        return self.passed / self.cases if self.cases else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "pass_rate": self.pass_rate}

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> CheckResult:
        return cls(**{key: value for key, value in raw.items() if key != "pass_rate"})


def load_behaviour_suite(path: Path) -> BehaviourSuite:
    """Read and validate a suite file.

    Raises:
        ConfigError: the file is missing, not YAML, or a check is malformed.
    """
    return read_suite(path, BehaviourSuite, "behaviour suite")


ModelT = TypeVar("ModelT", bound=BaseModel)


def read_suite(path: Path, model: type[ModelT], kind: str) -> ModelT:
    """Read a suite file as ``model`` (``kind`` names it in errors).

    Raises:
        ConfigError: the file is missing, not YAML, or does not validate.
    """
    if not path.is_file():
        raise ConfigError(f"behaviour checks file not found: {path} (eval.behaviour_checks)")
    try:
        return model.model_validate(yaml.safe_load(path.read_text(encoding="utf-8")))
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not valid YAML: {exc}") from exc
    except ValidationError as exc:
        raise ConfigError(f"{path}: invalid {kind}: {exc}") from exc


def run_check(check: BehaviourCheck, predict_proba: PredictProba, labels: list[str]) -> CheckResult:
    """Run one check against a classifier and count the passing cases."""
    failures: list[dict[str, Any]] = []
    if check.type == "MFT":
        assert check.expect_label is not None
        predicted = predict_proba(check.texts).argmax(axis=1)
        expected_id = labels.index(check.expect_label)
        passed = predicted == expected_id
        for text, ok, got in zip(check.texts, passed, predicted, strict=True):
            if not ok:
                failures.append({"text": text, "expected": check.expect_label, "got": labels[got]})
    else:
        originals = [pair[0] for pair in check.pairs]
        changed = [pair[1] for pair in check.pairs]
        before, after = predict_proba(originals), predict_proba(changed)
        if check.type == "INV":
            passed = before.argmax(axis=1) == after.argmax(axis=1)
        else:
            assert check.target_label is not None
            target = labels.index(check.target_label)
            change = after[:, target] - before[:, target]
            sign = 1.0 if check.direction == "increase" else -1.0
            passed = sign * change > check.margin
        for index, ok in enumerate(passed):
            if not ok:
                failures.append(
                    {
                        "original": originals[index],
                        "changed": changed[index],
                        "before": labels[int(before[index].argmax())],
                        "after": labels[int(after[index].argmax())],
                    }
                )
    return CheckResult(
        name=check.name,
        type=check.type,
        capability=check.capability,
        cases=int(len(passed)),
        passed=int(np.sum(passed)),
        min_pass_rate=check.min_pass_rate,
        failures=failures[:MAX_FAILURES_KEPT],
    )


def run_behaviour_suite(
    suite: BehaviourSuite, predict_proba: PredictProba, labels: Sequence[str]
) -> list[CheckResult]:
    """Run every check of ``suite``.

    Args:
        suite: the loaded suite.
        predict_proba: texts -> class probabilities, columns in ``labels`` order.
        labels: the model's class names in id order; must equal the suite's.

    Raises:
        ConfigError: the suite was written for other class names.
    """
    if list(labels) != suite.labels:
        raise ConfigError(
            f"behaviour suite is for labels {suite.labels}, the model has {list(labels)}"
        )
    return [run_check(check, predict_proba, list(labels)) for check in suite.checks]


def behaviour_metrics(results: Sequence[CheckResult]) -> dict[str, float]:
    """Pass rates as flat metrics: ``behaviour.<name>.pass_rate`` and the overall mean."""
    metrics = {f"behaviour.{result.name}.pass_rate": result.pass_rate for result in results}
    if results:
        metrics["behaviour.mean_pass_rate"] = float(np.mean([r.pass_rate for r in results]))
    return metrics


@dataclass(frozen=True)
class SuiteChoice:
    """Which suite file to run (None: none) and a line saying why."""

    path: str | None
    notice: str


def choose_behaviour_suite(
    setting: str | None, data_labels: Sequence[str], suite_labels: Mapping[str, Sequence[str]]
) -> SuiteChoice:
    """Resolve ``eval.behaviour_checks`` against the data's class names.

    Args:
        setting: ``auto``, a suite file, or None (no checks).
        data_labels: the data's class names in id order.
        suite_labels: suite file -> its class names; for ``auto`` the shipped suites, for
            a named file that file.

    Returns:
        The chosen file, or None with a notice: ``auto`` found no suite for these labels.

    Raises:
        ConfigError: a suite named explicitly is written for other labels.
    """
    labels = list(data_labels)
    if setting is None:
        return SuiteChoice(None, "eval.behaviour_checks is null: no behavioural checks")
    if setting != AUTO:
        if list(suite_labels[setting]) != labels:
            raise ConfigError(
                f"eval.behaviour_checks names {setting}, a suite for labels "
                f"{list(suite_labels[setting])}, but the data's labels are {labels}: name a "
                "suite written for these labels, or set eval.behaviour_checks to auto (picks a "
                "shipped suite that matches, or none) or null (no checks)"
            )
        return SuiteChoice(setting, f"behavioural checks from {setting}")
    matching = sorted(path for path, names in suite_labels.items() if list(names) == labels)
    if not matching:
        return SuiteChoice(
            None,
            f"eval.behaviour_checks is auto and no shipped suite is written for labels "
            f"{labels}: no behavioural checks run (name a suite file to add some)",
        )
    return SuiteChoice(
        matching[0], f"eval.behaviour_checks auto: {matching[0]} matches labels {labels}"
    )


def suite_task(path: Path) -> str:
    """The ``task`` a suite file declares ('' when none, as the sentiment suite)."""
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not valid YAML: {exc}") from exc
    return str(raw.get("task", "")) if isinstance(raw, dict) else ""


def shipped_suite_names(project_root: Path, for_task: Callable[[str], bool]) -> list[str]:
    """The shipped suites (``configs/behaviour/*.yaml``, relative to ``project_root``)
    whose declared ``task`` passes ``for_task``: each task's runner reads its own kind."""
    shipped = sorted((project_root / SHIPPED_SUITES_DIR).glob("*.yaml"))
    return [str(path.relative_to(project_root)) for path in shipped if for_task(suite_task(path))]


def is_text_suite(task: str) -> bool:
    """Whether a suite declaring ``task`` is for text classification: any but NER's."""
    return task != TOKEN_SUITE_TASK


def suite_for_labels(
    setting: str | None, data_labels: Sequence[str], project_root: Path
) -> tuple[BehaviourSuite | None, str]:
    """Load the suite ``eval.behaviour_checks`` resolves to for these labels.

    Relative paths are taken from ``project_root``; ``auto`` reads every text suite of
    ``configs/behaviour/*.yaml`` there (NER suites are chosen by
    ``components.token_behaviour.token_suite_for_labels``).

    Returns:
        (the suite or None, the notice saying which and why).

    Raises:
        ConfigError: a named suite is missing, malformed or written for other labels.
    """
    return resolve_suite(setting, data_labels, project_root, load_behaviour_suite, is_text_suite)


def resolve_suite(
    setting: str | None,
    data_labels: Sequence[str],
    project_root: Path,
    load: Callable[[Path], SuiteT],
    for_task: Callable[[str], bool],
) -> tuple[SuiteT | None, str]:
    """:func:`suite_for_labels` for any kind of suite: ``load`` reads one file, and
    ``auto`` considers the shipped files whose declared task passes ``for_task``."""
    if setting is None:
        return None, choose_behaviour_suite(None, data_labels, {}).notice
    names = shipped_suite_names(project_root, for_task) if setting == AUTO else [setting]
    suites = {name: load(project_root / name) for name in names}
    choice = choose_behaviour_suite(
        setting, data_labels, {name: suite.labels for name, suite in suites.items()}
    )
    return (suites[choice.path] if choice.path else None), choice.notice
