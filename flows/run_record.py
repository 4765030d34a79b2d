"""A retrain run's record: which steps ran, what they produced, and how the run ended.

The flow appends to it after every step and it is written to disk each time, so a crash
loses nothing; the Prefect completion/failure hooks render it as a markdown report in the
state folder, publish it as the flow run's Prefect artifact and attach it to the MLflow
parent run.

Kept beside Prefect's own records on purpose: Prefect's task states do not say whether a
training step was cached because of our key or how long each step took against the
others, they live in a server a killed ephemeral run takes with it, and the record (a
file) is what the failure hook and `ratchet demo` read back.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from components.files import write_atomically


@dataclass
class StepRecord:
    name: str
    status: str  # "done", "cached", "skipped", "failed"
    seconds: float
    outputs: dict[str, Any] = field(default_factory=dict)


@dataclass
class RunRecord:
    """What a user needs after a run: steps, outputs, the decision, where things are."""

    flow_run_id: str
    flow_run_name: str
    path: Path
    started_at: float = field(default_factory=time.time)
    steps: list[StepRecord] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)
    mlflow_run_id: str | None = None

    def add_step(
        self, name: str, status: str, seconds: float, outputs: dict[str, Any] | None = None
    ) -> None:
        self.steps.append(StepRecord(name, status, round(seconds, 2), outputs or {}))
        self.save()

    def update_summary(self, **values: Any) -> None:
        self.summary.update(values)
        self.save()

    def save(self) -> None:
        payload = asdict(self)
        payload["path"] = str(self.path)
        write_atomically(self.path, json.dumps(payload, indent=2, default=str))

    @classmethod
    def load(cls, path: Path) -> RunRecord:
        payload = json.loads(path.read_text(encoding="utf-8"))
        steps = [StepRecord(**step) for step in payload.pop("steps")]
        payload["path"] = Path(payload["path"])
        return cls(steps=steps, **payload)


def render_report(record: RunRecord, outcome: str, message: str | None) -> str:
    """Markdown for humans: outcome, step table, summary values."""
    lines = [
        f"# Retrain run `{record.flow_run_name}`: {outcome}",
        "",
        f"- Prefect flow run: `{record.flow_run_id}`",
        f"- MLflow parent run: `{record.mlflow_run_id or 'none'}`",
        f"- Wall time: {time.time() - record.started_at:.1f} s",
    ]
    if message:
        lines += ["", "## Cause", "", "```", message.strip(), "```"]
    lines += ["", "## Steps", "", "| step | status | seconds |", "|---|---|---|"]
    lines += [f"| {step.name} | {step.status} | {step.seconds} |" for step in record.steps]
    if record.summary:
        lines += ["", "## Summary", ""]
        lines += [f"- **{key}**: {value}" for key, value in record.summary.items()]
    return "\n".join(lines) + "\n"
