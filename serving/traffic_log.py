"""The Bento's inference log: every ``/classify`` call, recorded off the request path.

The service hands each answered request to :meth:`TrafficLog.record` (a non-blocking queue
put); one background thread computes the text features (``components/text_features.py``)
and writes one record per text through ``bentoml.monitor``: by default its file exporter
(JSON lines under ``traffic/<monitor>/data/`` in the state folder, rotated daily, each
record flushed as written, so a killed server loses at most the queue), or OTLP.

``ratchet serve`` passes the settings in ``RATCHET_TRAFFIC_LOG`` (JSON, see
:func:`traffic_log_environment`); without it the log goes to the state folder
(``$RATCHET_HOME`` or ``./.ratchet``) and keeps no text.
"""

from __future__ import annotations

import atexit
import collections
import itertools
import json
import logging
import os
import threading
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

from components.text_features import (
    FEEDBACK_DIR_NAME,
    FEEDBACK_FILE_NAME,
    MONITOR_NAME,
    TRAFFIC_DIR_NAME,
    text_hash,
)

logger = logging.getLogger(__name__)

TRAFFIC_ENV = "RATCHET_TRAFFIC_LOG"
# Requests waiting for the writer; beyond this the log drops requests (and says how many)
# rather than letting memory grow when the writer falls behind.
MAX_PENDING_REQUESTS = 10_000
# Requests written in one block (one tokenizer call, one flush).
WRITE_BATCH_REQUESTS = 256
# The writer wakes this often and writes what came meanwhile. Woken per request instead, it
# cost the event loop a thread hand-over per request and wrote tiny blocks: on the 2-core
# Xeon 0.55 ms of CPU per text written one at a time, 0.10 ms in blocks of 64.
WRITE_INTERVAL_S = 0.25

LOG_CONFIG_YAML = """
version: 1
disable_existing_loggers: false
loggers:
  bentoml_monitor_data:
    level: INFO
    handlers: [bentoml_monitor_data]
    propagate: false
  bentoml_monitor_schema:
    level: INFO
    handlers: [bentoml_monitor_schema]
    propagate: false
handlers:
  bentoml_monitor_data:
    class: logging.handlers.TimedRotatingFileHandler
    level: INFO
    formatter: bentoml_json
    filename: '{data_filename}'
    when: "midnight"
    utc: true
    backupCount: KEEP_DAYS
  bentoml_monitor_schema:
    class: logging.FileHandler
    level: INFO
    formatter: bentoml_json
    filename: '{schema_filename}'
formatters:
  bentoml_json:
    class: pythonjsonlogger.jsonlogger.JsonFormatter
    format: "()"
    validate: false
"""


@dataclass(frozen=True)
class TrafficSettings:
    """What the inference log does; ``ratchet serve`` sets them from the configuration."""

    log_dir: str
    exporter: str = "file"  # file | otlp | off
    otlp_endpoint: str | None = None
    log_texts: bool = False
    keep_days: int = 30
    feedback_file: str = ""  # default: feedback/feedback.jsonl beside log_dir


def default_log_dir() -> Path:
    """``traffic/`` in the state folder (``$RATCHET_HOME`` or ``./.ratchet``)."""
    state = os.environ.get("RATCHET_HOME") or str(Path.cwd() / ".ratchet")
    return Path(state) / TRAFFIC_DIR_NAME


def settings_from_environment(environ: dict[str, str] | None = None) -> TrafficSettings:
    """The settings ``ratchet serve`` put in ``RATCHET_TRAFFIC_LOG``, else the defaults."""
    raw = (os.environ if environ is None else environ).get(TRAFFIC_ENV)
    if not raw:
        return TrafficSettings(log_dir=str(default_log_dir()))
    return TrafficSettings(**json.loads(raw))


def feedback_path(settings: TrafficSettings) -> Path:
    """The feedback store: ``feedback/feedback.jsonl`` in the state folder."""
    if settings.feedback_file:
        return Path(settings.feedback_file)
    return Path(settings.log_dir).parent / FEEDBACK_DIR_NAME / FEEDBACK_FILE_NAME


def traffic_log_environment(config: Any, state_dir: Path) -> dict[str, str]:
    """The ``RATCHET_TRAFFIC_LOG`` variable for a server run with ``config``."""
    settings = TrafficSettings(
        log_dir=str(state_dir / TRAFFIC_DIR_NAME),
        feedback_file=str(state_dir / FEEDBACK_DIR_NAME / FEEDBACK_FILE_NAME),
        exporter=config.monitor.exporter,
        otlp_endpoint=config.monitor.otlp_endpoint,
        log_texts=config.serving.log_texts,
        keep_days=config.monitor.keep_days,
    )
    return {TRAFFIC_ENV: json.dumps(asdict(settings))}


def monitor_options(settings: TrafficSettings) -> tuple[str, dict[str, Any]]:
    """``bentoml.monitor``'s exporter class and options for these settings."""
    if settings.exporter == "otlp":
        return "otlp", {"endpoint": settings.otlp_endpoint}
    log_dir = Path(settings.log_dir)
    log_dir.mkdir(parents=True, exist_ok=True)
    config_file = log_dir / "logging.yaml"
    config_file.write_text(
        LOG_CONFIG_YAML.replace("KEEP_DAYS", str(settings.keep_days)), encoding="utf-8"
    )
    return "default", {"log_path": str(log_dir), "log_config_file": str(config_file)}


def served_labels(model_tag: str) -> list[str]:
    """The class names of the stored model behind ``model_tag``, for ``/feedback``'s schema
    (so the OpenAPI spec lists them); empty where the store does not hold it (a process
    that imports the service without building or serving it)."""
    import bentoml
    from bentoml.exceptions import NotFound

    try:
        stored = bentoml.models.get(model_tag)
        config = json.loads((Path(stored.path_of("hf_model")) / "config.json").read_text())
        id2label = config["id2label"]
        return [str(id2label[str(index)]) for index in range(len(id2label))]
    except (NotFound, OSError, KeyError, ValueError):
        return []


def label_field(model_tag: str) -> Any:
    """``/feedback``'s ``label`` field: one of the served model's class names."""
    labels = served_labels(model_tag)
    enum: dict[str, Any] = {"enum": labels}
    return Field(
        description="The right label of the text: one of the model's class names.",
        json_schema_extra=enum if labels else None,
    )


class TrafficLog:
    """A queue and one writer thread; :meth:`record` never waits for the writer."""

    def __init__(
        self, settings: TrafficSettings, model_dir: str | Path, model_name: str, version: str
    ) -> None:
        self.settings = settings
        self.model_name = model_name
        self.version = version
        self.model_dir = Path(model_dir)
        # deque.append and popleft are atomic: record() takes no lock and wakes nobody.
        self.pending: collections.deque[tuple[float, str, list[str], list[dict]]] = (
            collections.deque()
        )
        self.stopping = threading.Event()
        self.first_write = True
        # Request ids: a random prefix per server process and a counter (uuid4 per request
        # read the OS's random source on the event loop).
        self.request_ids = (f"{uuid.uuid4().hex[:16]}{n:016x}" for n in itertools.count())
        self.dropped = 0
        self.feedback_lock = threading.Lock()
        self.thread: threading.Thread | None = None
        if settings.exporter != "off":
            self.thread = threading.Thread(target=self.write_forever, name="traffic-log")
            self.thread.daemon = True
            self.thread.start()
            atexit.register(self.close)

    def record(self, texts: list[str], rows: list[dict]) -> None:
        """Queue one answered request (its texts and prediction rows) for the log."""
        if self.thread is None:
            return
        if len(self.pending) >= MAX_PENDING_REQUESTS:
            self.dropped += 1
            if self.dropped % 1000 == 1:
                logger.warning("inference log behind: %d requests dropped", self.dropped)
            return
        self.pending.append((time.time(), next(self.request_ids), texts, rows))

    def feedback(self, text: str, label: str, labels: list[str]) -> dict[str, Any]:
        """Append a corrected label to the feedback store (one JSON line, flushed).

        Raises:
            bentoml.exceptions.InvalidArgument: ``label`` is not one of the model's labels
                (the client gets 400 naming them).
        """
        from bentoml.exceptions import InvalidArgument

        if label not in labels:
            raise InvalidArgument(f"label {label!r} is not one of the model's labels {labels}")
        record = {
            "time": time.time(),
            "text": text,
            "label": label,
            "model": self.model_name,
            "version": self.version,
        }
        path = feedback_path(self.settings)
        path.parent.mkdir(parents=True, exist_ok=True)
        line = json.dumps(record, ensure_ascii=False) + "\n"
        with self.feedback_lock, path.open("a", encoding="utf-8") as store:
            store.write(line)
        return {"stored": True, "hash": text_hash(text)}

    def close(self, timeout_s: float = 10.0) -> None:
        """Write what is queued, then stop the writer (at exit, or on shutdown)."""
        if self.thread is None or not self.thread.is_alive():
            return
        self.stopping.set()
        self.thread.join(timeout_s)

    def write_forever(self) -> None:
        from components.text_features import load_featurizer

        featurizer = load_featurizer(self.model_dir)
        exporter, options = monitor_options(self.settings)
        while True:
            stopping = self.stopping.wait(WRITE_INTERVAL_S)
            for requests in drain(self.pending):
                try:
                    self.write(featurizer, exporter, options, requests)
                except Exception:  # the log must never take the server down; say why
                    count = len(requests)
                    logger.exception("inference log: %d requests could not be written", count)
            if stopping:  # close(): everything recorded before it is written
                return

    def write(
        self,
        featurizer: Any,
        exporter: str,
        options: dict[str, Any],
        requests: list[tuple[float, str, list[str], list[dict]]],
    ) -> None:
        """Write answered requests: one record per text, all in one monitor block (one
        tokenizer call and one flush for whatever queued up meanwhile)."""
        import bentoml

        from components.text_features import NUMERIC_FEATURES, text_features

        if self.first_write:
            # bentoml.monitor learns its columns from its first block, warning once per
            # further value of every column in it: the first text goes alone.
            self.first_write = False
            when, request_id, first_texts, first_rows = requests[0]
            self.write(
                featurizer, exporter, options, [requests[0][:2] + (first_texts[:1], first_rows[:1])]
            )
            requests = [(when, request_id, first_texts[1:], first_rows[1:]), *requests[1:]]
        texts = [text for _, _, request_texts, _ in requests for text in request_texts]
        if not texts:
            return
        rows = [row for *_, request_rows in requests for row in request_rows]
        per_text = [(when, rid) for when, rid, request_texts, _ in requests for _ in request_texts]
        features = text_features(featurizer, texts)
        with bentoml.monitor(MONITOR_NAME, exporter, options) as monitor:
            monitor.log_batch([when for when, _ in per_text], "time", "feature", "numerical")
            monitor.log_batch([rid for _, rid in per_text], "request", "feature", "categorical")
            monitor.log_batch([self.model_name] * len(texts), "model", "feature", "categorical")
            monitor.log_batch([self.version] * len(texts), "version", "feature", "categorical")
            for name in ("hash", *NUMERIC_FEATURES):
                kind = "categorical" if name == "hash" else "numerical"
                monitor.log_batch([row[name] for row in features], name, "feature", kind)
            embeddings = [row["embedding"] for row in features]
            monitor.log_batch(embeddings, "embedding", "feature", "numerical_sequence")
            if self.settings.log_texts:
                monitor.log_batch(texts, "text", "feature", "categorical")
            monitor.log_batch([row["label"] for row in rows], "label", "prediction", "categorical")
            monitor.log_batch(
                [float(row["score"]) for row in rows], "confidence", "prediction", "numerical"
            )


def drain(pending: collections.deque, most: int = WRITE_BATCH_REQUESTS) -> list[list[Any]]:
    """What is pending now, taken off the queue in blocks of at most ``most`` items."""
    items = [pending.popleft() for _ in range(len(pending))]
    return [items[start : start + most] for start in range(0, len(items), most)]


class FeedbackReceipt(BaseModel):
    stored: bool = Field(description="The label was added to the feedback store.")
    hash: str = Field(description="Hash of the text, as in the inference log.")
