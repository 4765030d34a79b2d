"""Served = gated: build a version's Bento and check it before any alias points at it.

The gate, ``ratchet registry promote``/``rollback``/``approve`` and ``ratchet serve`` call
:func:`release_version` with a registry version. It reuses a Bento already built for that
version with the current serving settings, or builds one and checks it: a fresh Python
process loads the *built* Bento (its copy of the service code, its arguments, the model
copied into the BentoML store) with ``bentoml.load`` and calls its ``classify`` API on a
sample of the version's test split. Labels must equal the evaluated ones and class
probabilities must be within :func:`probability_tolerance`. A Bento that fails the check
is deleted, so the store never holds an unchecked Bento to serve, and the alias stays.
An exported runtime (``serving.runtime: onnx | onnx-int8``) is first proven on the whole
test split (``serving/parity.py``, inside the build); its Bento is then checked against
that runtime's own predictions.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from components.config import RatchetConfig
from components.errors import ServingError
from components.state import ProjectPaths

logger = logging.getLogger(__name__)

CHECK_SAMPLE_SIZE = 32
# Evaluation scores in fp32 with the same tokenizer and token window; an fp32 Bento differs
# only by float summation order (other batch shapes and padding), ~1e-6 on a probability.
# 1e-4 leaves room for that and still catches a wrong model, head or window.
FP32_TOLERANCE = 1e-4
# bf16 keeps 8 significant bits (relative error ~0.4% per value): probabilities move by up
# to about 1e-2 after a 6-layer encoder, so allow 2e-2 when the Bento serves in bf16.
BF16_TOLERANCE = 2e-2
# onnx-int8 quantises activations on the fly with one scale per tensor and call; it scores
# one text per call (components/inference.py), so the Bento repeats parity's computation:
# allow for float reductions that another thread count may order differently.
INT8_TOLERANCE = 1e-3
CHECK_TIMEOUT_S = 300
RESULT_MARKER = "RATCHET_BENTO_CHECK "
# Runs in a fresh interpreter (BentoML reads its home and the service its arguments once
# per process): load the built Bento, instantiate its service, call its API in-process.
CHECK_SCRIPT = f"""
import asyncio, json, sys
import bentoml
service = bentoml.load(sys.argv[1])
instance = service()
module = sys.modules[type(instance).__module__]
texts = json.load(sys.stdin)
response = asyncio.run(instance.classify(texts))
print({RESULT_MARKER!r} + json.dumps({{
    "service_file": module.__file__,
    "version": response.model.version,
    "probabilities": [prediction.probabilities for prediction in response.predictions],
    "labels": [prediction.label for prediction in response.predictions],
}}))
"""


@dataclass(frozen=True)
class CheckSample:
    """Texts of a version's test split with the labels and probabilities evaluated on them."""

    texts: list[str]
    labels: list[str]
    probabilities: np.ndarray  # (texts, classes), columns in ``class_names`` order
    class_names: list[str]


def probability_tolerance(precision: str, runtime: str = "torch") -> float:
    """Largest allowed absolute difference between a served and an evaluated probability."""
    if runtime == "onnx-int8":
        return INT8_TOLERANCE
    return BF16_TOLERANCE if precision == "bf16" else FP32_TOLERANCE


def check_sample(predictions: pd.DataFrame, size: int = CHECK_SAMPLE_SIZE) -> CheckSample:
    """A fixed sample of recorded evaluation predictions: ``size`` rows drawn with seed 0,
    plus the longest text, so the token-window truncation is exercised too."""
    class_names = [
        column.removeprefix("prob_") for column in predictions if column.startswith("prob_")
    ]
    rows = predictions.sample(n=min(size, len(predictions)), random_state=0)
    longest = predictions["text"].astype(str).str.len().idxmax()
    if longest not in rows.index:
        rows = pd.concat([rows.iloc[: max(size - 1, 0)], predictions.loc[[longest]]])
    probabilities = rows[[f"prob_{name}" for name in class_names]].to_numpy(dtype=float)
    return CheckSample(
        texts=rows["text"].astype(str).tolist(),
        labels=[class_names[int(index)] for index in rows["predicted"]],
        probabilities=probabilities,
        class_names=class_names,
    )


def compare_answers(sample: CheckSample, answer: dict[str, Any], tolerance: float) -> list[str]:
    """One line per text whose served answer differs from its evaluation."""
    problems = []
    for index, (text, served) in enumerate(zip(sample.texts, answer["probabilities"], strict=True)):
        if sorted(served) != sorted(sample.class_names):
            return [
                f"the Bento answers with classes {sorted(served)}, evaluated {sample.class_names}"
            ]
        served_row = np.array([served[name] for name in sample.class_names])
        gap = float(np.max(np.abs(served_row - sample.probabilities[index])))
        label = answer["labels"][index]
        top_two = np.sort(sample.probabilities[index])[-2:]
        near_tie = len(top_two) == 2 and top_two[1] - top_two[0] <= 2 * tolerance
        if gap > tolerance or (label != sample.labels[index] and not near_tie):
            problems.append(
                f"text {index} ({text[:40]!r}): served {label} {served_row.round(6).tolist()}, "
                f"evaluated {sample.labels[index]} "
                f"{sample.probabilities[index].round(6).tolist()} (max gap {gap:.2g})"
            )
    return problems


def check_environment(config: RatchetConfig, home: str, project_root: Path) -> dict[str, str]:
    """The check process's environment: the state folder's BentoML home, and the key a
    server of this configuration would get (a Bento built with a key requires one)."""
    from serving.middleware import API_KEY_ENV, configured_api_key

    env = {**os.environ, "BENTOML_HOME": home}
    key = configured_api_key(config.serving, project_root)
    if key is not None:
        env[API_KEY_ENV] = key
    return env


def run_built_bento(bento_tag: str, texts: list[str], env: dict[str, str]) -> dict[str, Any]:
    """Load the built Bento in a fresh process and classify ``texts`` with its API.

    Raises:
        ServingError: the Bento did not load or did not answer.
    """
    with tempfile.TemporaryDirectory(prefix="ratchet-check-") as workdir:
        try:
            result = subprocess.run(
                [sys.executable, "-c", CHECK_SCRIPT, bento_tag],
                input=json.dumps(texts),
                env=env,
                cwd=workdir,  # nothing of the project on the path but what the Bento holds
                capture_output=True,
                text=True,
                timeout=CHECK_TIMEOUT_S,
            )
        except subprocess.TimeoutExpired as error:
            raise ServingError(
                f"Bento {bento_tag} did not answer within {CHECK_TIMEOUT_S} s"
            ) from error
    lines = [line for line in result.stdout.splitlines() if line.startswith(RESULT_MARKER)]
    if result.returncode != 0 or not lines:
        raise ServingError(
            f"loading Bento {bento_tag} and calling its API failed (exit {result.returncode}):\n"
            f"{result.stderr[-2000:]}"
        )
    return dict(json.loads(lines[-1].removeprefix(RESULT_MARKER)))


def check_bento(
    bento_tag: str,
    sample: CheckSample,
    version: str,
    precision: str,
    env: dict[str, str],
    runtime: str = "torch",
) -> None:
    """Call the built Bento on the sample; its answers must match the evaluation.

    Raises:
        ServingError: it serves another version, or its answers differ, naming the texts.
    """
    answer = run_built_bento(bento_tag, sample.texts, env)
    if answer["version"] != str(version):
        raise ServingError(f"Bento {bento_tag} serves v{answer['version']}, not v{version}")
    tolerance = probability_tolerance(precision, runtime)
    problems = compare_answers(sample, answer, tolerance)
    if problems:
        raise ServingError(
            f"Bento {bento_tag} does not answer as v{version} was evaluated on "
            f"{len(problems)} of {len(sample.texts)} test texts (labels must match, "
            f"probabilities within {tolerance:g}):\n" + "\n".join(problems[:5])
        )
    logger.info("Bento %s answers as evaluated on %d test texts", bento_tag, len(sample.texts))


def reusable_bento(config: RatchetConfig, version: str) -> str | None:
    """The newest Bento of ``version`` built with the current serving settings, if any."""
    from serving.build import bentos_of_version, serve_arguments

    for bento in bentos_of_version(config.registry.model_name, version):
        wanted = serve_arguments(config, str(bento.info.args.get("model_tag", "")))
        if dict(bento.info.args) == wanted:
            return str(bento.tag)
    return None


def release_version(config: RatchetConfig, paths: ProjectPaths, version: str) -> str:
    """The checked Bento of a registry version: found in the store, or built and checked.

    Returns:
        The Bento tag.

    Raises:
        ParityError: ``serving.runtime`` is an exported runtime that does not score the
            test split like the evaluated torch model (nothing is built).
        ServingError: the build failed, or the built Bento did not answer as evaluated
            (it is deleted again).
        RegistryError: the version does not exist.
    """
    import bentoml
    from mlflow import MlflowClient

    from components import registry
    from serving.build import bentoml_home, build_bento, stored_reference, use_bentoml_home

    home = bentoml_home(paths)
    with use_bentoml_home(home):
        found = reusable_bento(config, version)
        if found is not None:
            logger.info("v%s already has the checked Bento %s", version, found)
            return found
        predictions = registry.recorded_predictions(
            MlflowClient(), config.registry.model_name, version
        )
        if predictions is None:
            raise ServingError(
                f"{config.registry.model_name} v{version} has no recorded evaluation "
                "predictions to check its Bento against; register it through `ratchet retrain`"
            )
        tag = build_bento(config, paths, alias=None, version=version)
        # An exported runtime's Bento must answer as that runtime scored the test split
        # when its parity was proven (within the fp32 tolerance); torch's, as evaluated.
        model_tag = str(bentoml.bentos.get(tag).info.args["model_tag"])
        reference = stored_reference(model_tag)
        try:
            check_bento(
                tag,
                check_sample(predictions if reference is None else reference),
                version,
                config.serving.precision,
                check_environment(config, str(home), paths.project_root),
                config.serving.runtime,
            )
        except ServingError:
            bentoml.bentos.delete(tag)
            raise
    return tag
