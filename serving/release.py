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

A tagger (a version tagged ``task=token-classification``) is checked the same way with its
own probe: the built Bento's ``entities`` API, loaded in a fresh process, must find the
same entities (type, text, character offsets) as :func:`components.token_inference.predict_entities`
in this process on the stored model, scores within :func:`probability_tolerance`, on
:data:`TAGGER_PROBES` (punctuation, multi-sub-token and non-ASCII words, a text longer than
the token window) and up to ``CHECK_SAMPLE_SIZE`` sentences of the version's test split.
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
from serving.tasks import TEXT_TASK, TOKEN_TASK, version_task

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
# per process): load the built Bento, instantiate its service, call its API (argv[2],
# ``classify`` or ``entities``) in-process and print the service file and the response.
CHECK_SCRIPT = f"""
import asyncio, json, sys
import bentoml
service = bentoml.load(sys.argv[1])
instance = service()
module = sys.modules[type(instance).__module__]
texts = json.load(sys.stdin)
response = asyncio.run(getattr(instance, sys.argv[2])(texts))
print({RESULT_MARKER!r} + json.dumps({{
    "service_file": module.__file__,
    "version": response.model.version,
    "predictions": response.model_dump()["predictions"],
}}))
"""
TAGGER_PROBES = [
    "Angela Merkel met Emmanuel Macron in Paris on Tuesday.",
    "Zoë Ñúñez visited São Paulo, then (briefly) Zürich!",
    "Farid Smith's U.S. trip cost 1,000 dollars, O'Neill said.",
    "Delegates from " + "the city of Quito and " * 120 + "Lima met.",
]
TOKEN_PREDICTIONS_FILE = "predictions.jsonl"  # components/token_evaluate.py


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


def run_built_bento(
    bento_tag: str, texts: list[str], env: dict[str, str], api: str = "classify"
) -> dict[str, Any]:
    """Load the built Bento in a fresh process and call its API (``classify`` or
    ``entities``) on ``texts``.

    Returns:
        ``service_file`` (where the service module was loaded from), ``version`` (the
        served registry version) and ``predictions`` (the API's, one per text); for
        ``classify`` also ``labels`` and ``probabilities`` per text.

    Raises:
        ServingError: the Bento did not load or did not answer.
    """
    with tempfile.TemporaryDirectory(prefix="ratchet-check-") as workdir:
        try:
            result = subprocess.run(
                [sys.executable, "-c", CHECK_SCRIPT, bento_tag, api],
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
    answer = dict(json.loads(lines[-1].removeprefix(RESULT_MARKER)))
    if api == "classify":
        answer["labels"] = [row["label"] for row in answer["predictions"]]
        answer["probabilities"] = [row["probabilities"] for row in answer["predictions"]]
    return answer


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


def tagger_probe_texts(client: Any, model_name: str, version: str) -> list[str]:
    """:data:`TAGGER_PROBES` and a fixed sample (seed 0) of the version's test sentences,
    their recorded tokens joined by spaces, when its evaluation logged them."""
    import random

    from components.registry import download_evaluation_file, get_version

    with tempfile.TemporaryDirectory() as tmp:
        path = download_evaluation_file(
            client, get_version(client, model_name, version), TOKEN_PREDICTIONS_FILE, Path(tmp)
        )
        lines = path.read_text(encoding="utf-8").splitlines() if path is not None else []
    sentences = [" ".join(json.loads(line)["tokens"]) for line in lines if line.strip()]
    sample = random.Random(0).sample(sentences, min(CHECK_SAMPLE_SIZE, len(sentences)))
    return TAGGER_PROBES + [text for text in sample if text.strip()]


def entity_spans(prediction: dict[str, Any]) -> list[tuple[str, int, int, str]]:
    return [(e["label"], e["start"], e["end"], e["text"]) for e in prediction["entities"]]


def compare_entities(
    texts: list[str],
    expected: list[dict[str, Any]],
    served: list[dict[str, Any]],
    tolerance: float,
) -> list[str]:
    """One line per text whose served entities differ from the in-process ones: types,
    offsets and texts must be equal (and slice the text), scores within ``tolerance``."""
    problems = []
    for index, (text, wanted, got) in enumerate(zip(texts, expected, served, strict=True)):
        spans = entity_spans(got)
        sliced = all(text[start:end] == part for _, start, end, part in spans)
        pairs = zip(wanted["entities"], got["entities"], strict=False)  # unequal: not same
        gap = max((abs(a["score"] - b["score"]) for a, b in pairs), default=0.0)
        same = spans == entity_spans(wanted) and wanted["windows"] == got["windows"]
        if not (same and sliced and gap <= tolerance):
            problems.append(
                f"text {index} ({text[:40]!r}): served {spans}, in-process "
                f"{entity_spans(wanted)} (max score gap {gap:.2g})"
            )
    return problems


def check_tagger_bento(
    bento_tag: str, texts: list[str], version: str, precision: str, env: dict[str, str]
) -> None:
    """Call the built tagger Bento's ``entities`` on ``texts``; it must find what the
    stored model finds in this process (same code path, ``components/token_inference.py``).

    Raises:
        ServingError: it serves another version, or its entities differ, naming the texts.
    """
    import bentoml

    from components.token_inference import load_tagger, predict_entities

    model_tag = str(bentoml.bentos.get(bento_tag).info.args["model_tag"])
    model_dir = bentoml.models.get(model_tag).path_of("hf_model")
    expected = predict_entities(load_tagger(model_dir, precision), texts)
    answer = run_built_bento(bento_tag, texts, env, api="entities")
    if answer["version"] != str(version):
        raise ServingError(f"Bento {bento_tag} serves v{answer['version']}, not v{version}")
    tolerance = probability_tolerance(precision)
    problems = compare_entities(texts, expected, answer["predictions"], tolerance)
    if problems:
        raise ServingError(
            f"Bento {bento_tag} does not tag as v{version} does in-process on "
            f"{len(problems)} of {len(texts)} probe texts (entities must match, scores "
            f"within {tolerance:g}):\n" + "\n".join(problems[:5])
        )
    logger.info("Bento %s tags as v%s on %d probe texts", bento_tag, version, len(texts))


def reusable_bento(config: RatchetConfig, version: str, task: str = TEXT_TASK) -> str | None:
    """The newest Bento of ``version`` built with the current serving settings, if any."""
    from serving.build import bentos_of_version, serve_arguments

    for bento in bentos_of_version(config.registry.model_name, version):
        wanted = serve_arguments(config, str(bento.info.args.get("model_tag", "")), task)
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
    client, name = MlflowClient(), config.registry.model_name
    task = version_task(registry.version_tags(client, name, version))
    with use_bentoml_home(home):
        found = reusable_bento(config, version, task)
        if found is not None:
            logger.info("v%s already has the checked Bento %s", version, found)
            return found
        if task == TOKEN_TASK:
            probe = tagger_probe_texts(client, name, version)
        else:
            predictions = registry.recorded_predictions(client, name, version)
            if predictions is None:
                raise ServingError(
                    f"{name} v{version} has no recorded evaluation predictions to check "
                    "its Bento against; register it through `ratchet retrain`"
                )
        tag = build_bento(config, paths, alias=None, version=version)
        env = check_environment(config, str(home), paths.project_root)
        try:
            if task == TOKEN_TASK:
                check_tagger_bento(tag, probe, version, config.serving.precision, env)
            else:
                # An exported runtime's Bento must answer as that runtime scored the test
                # split when its parity was proven (fp32 tolerance); torch's, as evaluated.
                model_tag = str(bentoml.bentos.get(tag).info.args["model_tag"])
                reference = stored_reference(model_tag)
                sample = check_sample(predictions if reference is None else reference)
                precision, runtime = config.serving.precision, config.serving.runtime
                check_bento(tag, sample, version, precision, env, runtime)
        except ServingError:
            bentoml.bentos.delete(tag)
            raise
    return tag
