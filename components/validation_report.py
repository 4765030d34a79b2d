"""A data validation run's report, and what both suites (text and token classification)
do with it: the error message listing each failed expectation with a few offending rows
by file and line, and the JSON summary the ``validate`` stage writes as a DVC metric."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from components.errors import DataValidationError
from components.ingest import RawDataset

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ValidationReport:
    """What the checkpoint found: one entry per expectation, and where Data Docs are."""

    success: bool
    source: str
    row_counts: dict[str, int]
    checks: list[dict[str, Any]]
    failures: list[dict[str, Any]] = field(default_factory=list)
    docs_index: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary (the validate stage writes it as a DVC metrics file)."""
        return {
            "success": self.success,
            "source": self.source,
            "row_counts": self.row_counts,
            "expectations": len(self.checks),
            "failed": len(self.failures),
            "checks": [
                {key: value for key, value in check.items() if key != "unexpected_index"}
                for check in self.checks
            ],
        }


def settle_report(
    raw: RawDataset,
    checks: list[dict[str, Any]],
    failures: list[dict[str, Any]],
    docs_dir: Path | None,
    describe: Callable[[ValidationReport], str],
) -> ValidationReport:
    """The report of a checkpoint run; raise :class:`DataValidationError` with the
    message ``describe`` writes when any expectation failed."""
    report = ValidationReport(
        success=not failures,
        source=raw.source,
        row_counts=raw.row_counts,
        checks=checks,
        failures=failures,
        docs_index=str(docs_dir / "index.html") if docs_dir is not None else None,
    )
    logger.info("validated %s: %d expectations, %d failed", raw.source, len(checks), len(failures))
    if failures:
        raise DataValidationError(describe(report), failures)
    return report


def failure_examples(
    rows: pd.DataFrame,
    raw: RawDataset,
    text: Callable[[pd.Series], Any],
    details: Callable[[pd.Series], dict[str, Any]],
) -> list[dict[str, Any]]:
    """The offending ``rows`` as examples: the file and line each came from, its ``text``
    (shortened) and what ``details`` picks out of the row (its label, or the problem)."""
    return [
        {
            "file": raw.files.get(row["split"], row["split"]),
            "line": int(row["line"]),
            "text": shorten(text(row)),
            **details(row),
        }
        for _, row in rows.iterrows()
    ]


def shorten(text: Any, limit: int = 80) -> Any:
    if isinstance(text, str) and len(text) > limit:
        return text[: limit - 3] + "..."
    return text


def format_report(
    report: ValidationReport,
    unit: str,
    name_failure: Callable[[dict[str, Any]], str],
    show_example: Callable[[dict[str, Any]], str],
) -> str:
    """A failed report as an error message: the counts of ``unit`` per split, every
    failed expectation as ``name_failure`` names it with its observed value, and its
    examples by file and line as ``show_example`` writes them; the Data Docs last."""
    counts = ", ".join(f"{name}={rows}" for name, rows in report.row_counts.items())
    lines = [
        f"data validation failed: {len(report.failures)} of {len(report.checks)} "
        f"expectations failed for {report.source} ({unit}: {counts})"
    ]
    for failure in report.failures:
        lines.append(f"  - {name_failure(failure)}: observed {failure.get('observed')}")
        for example in failure["examples"]:
            lines.append(f"      {example['file']} line {example['line']}{show_example(example)}")
    if report.docs_index:
        lines.append(f"Data Docs: {report.docs_index}")
    return "\n".join(lines)


def write_summary(report: ValidationReport, report_path: Path | None) -> ValidationReport:
    """Write a passing run's JSON summary to ``report_path`` (the DVC metric), when given."""
    if report_path is not None:
        report_path.parent.mkdir(parents=True, exist_ok=True)
        report_path.write_text(json.dumps(report.to_dict(), indent=2) + "\n", encoding="utf-8")
    return report
