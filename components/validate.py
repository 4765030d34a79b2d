"""Validate: the Great Expectations gate that bad data must not pass.

    ratchet validate --data ../shared/data/sst2

The suite is built in code from ``data.checks`` and ``data.labels`` (:func:`build_suite`)
and runs as a GE checkpoint over one frame holding every raw split plus a few derived
columns (stripped length, duplicate flag, class share, train overlap, UTF-8 check), so
checks GE has no built-in expectation for (leakage, duplicate share, minimum class
share) are ordinary GE expectations too. The checkpoint renders Data Docs (HTML) into
``docs_dir``. Any failure raises :class:`DataValidationError` listing every failed
expectation with its observed value and a few offending rows.
"""

from __future__ import annotations

import logging
import os
import unicodedata
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from components.config import DataChecksConfig, DataConfig
from components.ingest import RawDataset, class_names, label_mapping, read_dataset, text_or_none
from components.state import ProjectPaths
from components.validation_report import (
    ValidationReport,
    failure_examples,
    format_report,
    settle_report,
    write_summary,
)

if TYPE_CHECKING:
    import great_expectations as gx


SUITE_NAME = "ratchet-data"
DOCS_SITE_NAME = "ratchet"
# Raw splits whose texts must not also appear in ``train`` (leakage).
HELD_OUT_SPLITS = ("dev", "test")


def normalise_text(text: str) -> str:
    """The key for duplicates, train/test overlap and split hashing: texts a model cannot
    tell apart get the same key.

    Compatibility forms are unified (NFKD: ligatures, full-width letters), accents and
    other combining marks dropped, case folded, invisible format and control characters
    (zero-width spaces, soft hyphens) dropped and whitespace collapsed: what an uncased
    BERT tokenizer, such as the shipped MiniLM's, does before it splits words, so texts
    that differ only there get identical token ids. The key is the same for every
    ``model.base``: the split is a data artefact (DVC's ``prepare`` stage) and must not
    move when the model changes. For a cased model it merges a little more than the model
    would; for leakage and duplicates that errs on the safe side.
    """
    decomposed = unicodedata.normalize("NFKD", text)
    kept = "".join(
        char
        for char in decomposed
        if char.isspace() or unicodedata.category(char) not in DROPPED_CATEGORIES
    )
    folded = unicodedata.normalize("NFKC", kept.casefold())
    return " ".join(folded.split())


# Nonspacing and enclosing marks (accents), format characters (zero-width, soft hyphen)
# and control characters: nothing a text's words are made of.
DROPPED_CATEGORIES = frozenset({"Mn", "Me", "Cf", "Cc"})


def allowed_label_values(data_cfg: DataConfig, raw_labels: list[str | None]) -> list[str]:
    """Every raw label string that maps to a class (ids, names and aliases)."""
    return sorted(label_mapping(data_cfg, raw_labels))


def validation_frame(raw: RawDataset, data_cfg: DataConfig) -> pd.DataFrame:
    """All raw splits in one frame, with the derived columns the suite checks."""
    frame = pd.concat(
        [split_frame.assign(split=name) for name, split_frame in raw.splits.items()],
        ignore_index=True,
    )
    if "text" in frame:
        text = frame["text"]
        present = text.notna()
        normalised = text.where(~present, text.fillna("").map(normalise_text))
        stripped_length = text.fillna("").str.strip().str.len()
        frame["text_length"] = stripped_length.where(present & (stripped_length > 0))
        frame["utf8_valid"] = text.map(is_utf8_encodable)
        frame["overlaps_train"] = overlap_with_train(frame["split"], normalised).astype("int64")
        if "label" in frame:
            keys = frame[["split", "label"]].assign(key=normalised)
            frame["duplicate_row"] = keys.duplicated(keep="first") & present
    if "label" in frame:
        names = class_names(data_cfg, frame["label"].tolist())
        mapping = label_mapping(data_cfg, frame["label"].tolist())
        frame["class_name"] = frame["label"].map(
            lambda value: names[mapping[value]] if value in mapping else None
        )
        counts = frame.groupby(["split", "class_name"])["line"].transform("size")
        frame["class_share"] = counts / frame.groupby("split")["line"].transform("size")
        frame["classes_missing_from_split"] = frame["split"].map(
            classes_missing_by_split(frame, names)
        )
    return frame


def classes_missing_by_split(frame: pd.DataFrame, names: list[str]) -> dict[str, str]:
    """Per split, the declared classes it has no row of ("" when it has them all): a
    class share check over rows cannot see a class that has no rows."""
    missing = {}
    for split, rows in frame.groupby("split")["class_name"]:
        present = set(rows.dropna())
        absent = [name for name in names if name not in present]
        missing[str(split)] = f"split '{split}' has no {absent}" if absent else ""
    return missing


def is_utf8_encodable(text: Any) -> bool:
    """False for strings with lone surrogates (e.g. JSON ``"\\ud800"``), which no file can hold."""
    if not isinstance(text, str):
        return True
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def overlap_with_train(splits: pd.Series, normalised: pd.Series) -> pd.Series:
    """True for held-out rows whose normalised text also appears in ``train``."""
    train_texts = set(normalised[(splits == "train") & normalised.notna()])
    return splits.isin(HELD_OUT_SPLITS) & normalised.isin(train_texts)


def build_suite(data_cfg: DataConfig, labels: list[str], allowed_labels: list[str]) -> Any:
    """The expectation suite, from config: one GE expectation per data rule.

    Args:
        data_cfg: column names and ``data.checks`` thresholds.
        labels: class names in id order (configured or inferred).
        allowed_labels: raw label strings that map to a class.

    Returns:
        A ``great_expectations.ExpectationSuite`` named ``ratchet-data``.
    """
    gx = import_great_expectations()
    checks = data_cfg.checks
    exp = gx.expectations
    text, label = data_cfg.text_column, data_cfg.label_column
    expectations = [
        exp.ExpectColumnToExist(column="text", description=f"text column {text!r} present"),
        exp.ExpectColumnToExist(column="label", description=f"label column {label!r} present"),
        exp.ExpectColumnValuesToNotBeNull(column="text", description="no null texts"),
        exp.ExpectColumnValuesToNotBeNull(column="label", description="no null labels"),
        exp.ExpectColumnValuesToNotMatchRegex(
            column="text", regex=r"^\s*$", description="no empty or whitespace-only texts"
        ),
        exp.ExpectColumnValuesToBeBetween(
            column="text_length",
            min_value=checks.min_chars,
            max_value=checks.max_chars,
            description=f"stripped text length within [{checks.min_chars}, {checks.max_chars}]",
        ),
        exp.ExpectColumnValuesToBeInSet(
            column="label",
            value_set=allowed_labels,
            description=f"labels within the declared set {labels}",
        ),
        exp.ExpectColumnValuesToBeInSet(
            column="utf8_valid", value_set=[True], description="texts encodable as UTF-8"
        ),
        duplicates_expectation(exp, checks, "duplicate_row", "rows"),
        exp.ExpectColumnDistinctValuesToContainSet(
            column="class_name", value_set=labels, description=f"every class present: {labels}"
        ),
        exp.ExpectColumnUniqueValueCountToBeBetween(
            column="class_name", min_value=2, description="at least two classes"
        ),
        exp.ExpectColumnValuesToBeInSet(
            column="classes_missing_from_split",
            value_set=[""],
            description="every class present in every split",
        ),
        exp.ExpectColumnMinToBeBetween(
            column="class_share",
            min_value=checks.min_class_fraction,
            description=f"each class at least {checks.min_class_fraction:.0%} of its split",
        ),
        train_overlap_expectation(exp, checks, "texts"),
    ]
    return gx.ExpectationSuite(name=SUITE_NAME, expectations=expectations)


def duplicates_expectation(exp: Any, checks: DataChecksConfig, column: str, unit: str) -> Any:
    """``column`` (True on a repeated row) False but for ``data.checks.max_duplicate_fraction``
    of the rows; ``unit`` names the rows in the description."""
    return exp.ExpectColumnValuesToBeInSet(
        column=column,
        value_set=[False],
        mostly=1.0 - checks.max_duplicate_fraction,
        description=f"duplicate {unit} at most {checks.max_duplicate_fraction:.0%}",
    )


def train_overlap_expectation(exp: Any, checks: DataChecksConfig, unit: str) -> Any:
    """At most ``data.checks.max_test_overlap`` held-out rows (``overlaps_train``) also in
    the train split; ``unit`` names the rows in the description."""
    return exp.ExpectColumnSumToBeBetween(
        column="overlaps_train",
        min_value=0,
        max_value=checks.max_test_overlap,
        description=f"at most {checks.max_test_overlap} held-out {unit} also in train",
    )


def import_great_expectations() -> Any:
    """Import GE offline and quiet (it is slow to import, so only when validating)."""
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    with info_logs_muted():
        import great_expectations
    return great_expectations


@contextmanager
def info_logs_muted() -> Iterator[None]:
    """Mute INFO logs for a block: GE logs its registry and config loading at INFO and
    pins some of its loggers to INFO, so raising their level is not enough."""
    previous = logging.root.manager.disable
    logging.disable(logging.INFO)
    try:
        yield
    finally:
        logging.disable(previous)


def run_checkpoint(frame: pd.DataFrame, suite: Any, docs_dir: Path | None) -> Any:
    """Run ``suite`` over ``frame`` as a GE checkpoint; render Data Docs into ``docs_dir``.

    Returns:
        The ``ExpectationSuiteValidationResult`` in SUMMARY format: counts, and the
        first 20 offending rows (COMPLETE would embed every row index in Data Docs).
    """
    gx = import_great_expectations()
    from great_expectations.checkpoint import UpdateDataDocsAction
    from great_expectations.data_context.types.base import ProgressBarsConfig

    with info_logs_muted():
        context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False)
    actions = []
    if docs_dir is not None:
        add_docs_site(context, docs_dir)
        actions.append(UpdateDataDocsAction(name="data_docs", site_names=[DOCS_SITE_NAME]))
    batch = (
        context.data_sources.add_pandas("ratchet")
        .add_dataframe_asset("rows")
        .add_batch_definition_whole_dataframe("all_splits")
    )
    suite = context.suites.add(suite)
    definition = context.validation_definitions.add(
        gx.ValidationDefinition(name="ratchet-data-rows", data=batch, suite=suite)
    )
    checkpoint = context.checkpoints.add(
        gx.Checkpoint(
            name="ratchet-data",
            validation_definitions=[definition],
            actions=actions,
            result_format={"result_format": "SUMMARY", "partial_unexpected_count": 20},
        )
    )
    with info_logs_muted():
        result = checkpoint.run(batch_parameters={"dataframe": frame})
    return next(iter(result.run_results.values()))


def add_docs_site(context: gx.data_context.AbstractDataContext, docs_dir: Path) -> None:
    docs_dir.mkdir(parents=True, exist_ok=True)
    context.add_data_docs_site(
        site_name=DOCS_SITE_NAME,
        site_config={
            "class_name": "SiteBuilder",
            "store_backend": {
                "class_name": "TupleFilesystemStoreBackend",
                "base_directory": str(docs_dir),
            },
            "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
        },
    )


def validate_dataset(
    raw: RawDataset, data_cfg: DataConfig, docs_dir: Path | None = None
) -> ValidationReport:
    """Run the data suite over every split of ``raw``; raise on any failed expectation.

    Args:
        raw: the data set as read by :func:`components.ingest.read_dataset`.
        data_cfg: column names, label set and ``data.checks`` thresholds.
        docs_dir: where to render Data Docs (HTML); ``None`` skips them.

    Returns:
        The report of a passing run.

    Raises:
        DataValidationError: one or more expectations failed; the message lists each with
            its observed value and up to ``data.checks.max_failed_examples`` offending rows.
    """
    frame = validation_frame(raw, data_cfg)
    raw_labels = frame["label"].tolist() if "label" in frame else []
    labels = class_names(data_cfg, raw_labels)
    suite = build_suite(data_cfg, labels, allowed_label_values(data_cfg, raw_labels))
    result = run_checkpoint(frame, suite, docs_dir)
    checks = [summarise_result(item, frame) for item in result.results]
    failures = [
        describe_failure(check, frame, raw, data_cfg)
        for check in checks
        if not check["success"] and not check.get("skipped")
    ]
    return settle_report(raw, checks, failures, docs_dir, format_failures)


def summarise_result(item: Any, frame: pd.DataFrame) -> dict[str, Any]:
    """One expectation result as plain data: name, column, success, observed value."""
    config = item.expectation_config
    column = config.kwargs.get("column")
    result = item.result or {}
    check: dict[str, Any] = {
        "expectation": config.type,
        "column": column,
        "description": config.description or config.type,
        "success": bool(item.success),
    }
    if column not in frame.columns and config.type != "expect_column_to_exist":
        check["skipped"] = True  # its column is missing; expect_column_to_exist reports that
    elif "unexpected_count" in result:
        count, total = result["unexpected_count"], result.get("element_count", len(frame))
        check["observed"] = f"{count} of {total} rows ({result.get('unexpected_percent', 0):.1f}%)"
        check["unexpected_index"] = list(result.get("partial_unexpected_index_list") or [])
        if column in ("label", "classes_missing_from_split") and count:
            values = sorted({str(v) for v in result.get("partial_unexpected_list") or []})
            check["observed"] += f", values {values[:10]}"
    elif "observed_value" in result:
        check["observed"] = plain(result["observed_value"])
    return check


def plain(value: Any) -> Any:
    """numpy scalars and sets as JSON-friendly Python values."""
    if hasattr(value, "item"):
        return value.item()
    if isinstance(value, set | tuple | list):
        return sorted((plain(v) for v in value), key=str)
    return value


def offending_rows(
    check: dict[str, Any], frame: pd.DataFrame, data_cfg: DataConfig
) -> pd.DataFrame:
    """The rows behind a failed expectation (empty for table-level ones)."""
    if check.get("unexpected_index"):
        return frame.loc[check["unexpected_index"]]
    if check["column"] == "class_share":
        return frame[frame["class_share"] < data_cfg.checks.min_class_fraction]
    if check["column"] == "overlaps_train":
        return frame[frame["overlaps_train"] == 1]
    return frame.iloc[0:0]


def describe_failure(
    check: dict[str, Any], frame: pd.DataFrame, raw: RawDataset, data_cfg: DataConfig
) -> dict[str, Any]:
    """A failed check with its observed value and a few offending rows (file, line, values)."""
    failure = {key: value for key, value in check.items() if key != "unexpected_index"}
    if check["expectation"] == "expect_column_to_exist":
        configured = data_cfg.text_column if check["column"] == "text" else data_cfg.label_column
        columns = {c for split in raw.splits.values() for c in split.attrs.get("columns", [])}
        failure["observed"] = f"no column {configured!r}; columns are {sorted(columns)}"
        if {"tokens", "tags"} <= columns:
            failure["observed"] += (
                " (token/tag lists: set data.task: token-classification to read them)"
            )
    rows = offending_rows(check, frame, data_cfg).head(data_cfg.checks.max_failed_examples)
    failure["examples"] = failure_examples(
        rows,
        raw,
        lambda row: text_or_none(row.get("text")),
        lambda row: {"label": text_or_none(row.get("label"))},
    )
    return failure


def format_failures(report: ValidationReport) -> str:
    """The error message: every failed expectation, observed value, offending rows."""
    return format_report(
        report,
        "rows",
        lambda failure: f"{failure['description']} [{failure['expectation']}({failure['column']})]",
        lambda example: f": text={example['text']!r} label={example['label']!r}",
    )


def run_validation(
    source: str,
    data_cfg: DataConfig,
    paths: ProjectPaths,
    report_path: Path | None = None,
    recorded_source: str | None = None,
) -> ValidationReport:
    """Read ``source``, validate it, render Data Docs into the state folder.

    Args:
        source: a file, folder or ``hf:`` source (relative to the project root).
        data_cfg: the ``data`` section.
        paths: project paths; Data Docs go to ``paths.data_docs_dir``.
        report_path: where to write the JSON summary of a passing run (the DVC metric).
        recorded_source: the source named in the summary, when the data is validated
            somewhere else first (the flow validates ``data/incoming`` as ``data/raw``).

    Raises:
        DataError: the source cannot be read.
        DataValidationError: an expectation failed; nothing is written to ``report_path``.
    """
    raw = read_dataset(source, data_cfg, paths.model_root)
    report = validate_dataset(raw, data_cfg, paths.data_docs_dir)
    if recorded_source is not None:
        report = replace(report, source=recorded_source)
    return write_summary(report, report_path)
