"""Validate token-classification data: the Great Expectations gate for tagged sentences.

    ratchet validate          # with data.task: token-classification

The checkpoint machinery is the classification suite's (:mod:`components.validate`); the
frame holds one row per sentence, with derived columns for the rules GE has no built-in
expectation for: tokens and tags of equal length, tags in the declared or inferred tag
set, valid IOB2 (an ``I-X`` continues a ``B-X``/``I-X``), no empty sentence, every entity
type at ``data.checks.min_entity_type_fraction`` of each split's entities, whole-sentence
duplicates (``max_duplicate_fraction``) and train overlap (``max_test_overlap``), and,
given a tokenizer, the share of sentences longer than ``model.max_length`` sub-word tokens
(``max_truncated_fraction``). Any failure raises :class:`DataValidationError` naming each
failed rule and a few offending sentences by file and line.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import pandas as pd

from components.config import DataConfig
from components.ingest import RawDataset
from components.state import ProjectPaths
from components.token_data import entity_types, iob2_problem, read_token_dataset, tag_names
from components.validate import (
    SUITE_NAME,
    duplicates_expectation,
    import_great_expectations,
    normalise_text,
    overlap_with_train,
    run_checkpoint,
    summarise_result,
    train_overlap_expectation,
)
from components.validation_report import (
    ValidationReport,
    failure_examples,
    format_report,
    settle_report,
    write_summary,
)

# Columns whose offending values say what is wrong (shown beside the sentence).
PROBLEM_COLUMNS = ("length_problem", "unknown_tags", "iob2_problem", "types_below_share")


def subword_lengths(tokens: list[list[str]], tokenizer: Any) -> list[int]:
    """Sub-word tokens per sentence as the model sees it, special tokens included."""
    if not tokens:
        return []
    encoded = tokenizer(tokens, is_split_into_words=True, truncation=False, verbose=False)
    return [len(ids) for ids in encoded["input_ids"]]


def types_below_share(frame: pd.DataFrame, types: list[str], min_share: float) -> dict[str, str]:
    """Per split, the entity types under ``min_share`` of its entities ("" when none)."""
    found = {}
    for split, tag_lists in frame.groupby("split")["tags"]:
        counts = Counter(tag[2:] for tags in tag_lists for tag in tags if tag.startswith("B-"))
        total = sum(counts.values())
        low = [
            f"{kind} {counts[kind] / total if total else 0:.1%}"
            for kind in types
            if not total or counts[kind] / total < min_share
        ]
        found[str(split)] = f"split '{split}': {', '.join(low)} of entities" if low else ""
    return found


def token_validation_frame(
    raw: RawDataset,
    data_cfg: DataConfig,
    tags: list[str],
    tokenizer: Any = None,
    max_length: int | None = None,
) -> pd.DataFrame:
    """All raw splits' sentences in one frame, with the derived columns the suite checks."""
    frame = pd.concat(
        [split_frame.assign(split=name) for name, split_frame in raw.splits.items()],
        ignore_index=True,
    )
    known = set(tags)
    frame["n_tokens"] = frame["tokens"].map(len)
    frame["length_problem"] = [
        "" if len(t) == len(g) else f"{len(t)} tokens, {len(g)} tags"
        for t, g in zip(frame["tokens"], frame["tags"], strict=True)
    ]
    frame["unknown_tags"] = frame["tags"].map(lambda g: " ".join(sorted(set(g) - known)))
    frame["iob2_problem"] = frame["tags"].map(iob2_problem)
    normalised = frame["text"].map(normalise_text) + "\x00" + frame["tags"].map(" ".join)
    frame["duplicate_sentence"] = frame[["split"]].assign(key=normalised).duplicated()
    frame["overlaps_train"] = overlap_with_train(frame["split"], frame["text"].map(normalise_text))
    frame["overlaps_train"] = frame["overlaps_train"].astype("int64")
    low = types_below_share(frame, entity_types(tags), data_cfg.checks.min_entity_type_fraction)
    frame["types_below_share"] = frame["split"].map(low)
    if tokenizer is not None and max_length is not None:
        lengths = subword_lengths(frame["tokens"].tolist(), tokenizer)
        frame["over_max_length"] = [length > max_length for length in lengths]
    frame["label"] = frame["tags"].map(" ".join)
    return frame


def build_token_suite(data_cfg: DataConfig, tags: list[str], max_length: int | None) -> Any:
    """The expectation suite for tagged sentences, from ``data.checks`` and the tag set."""
    gx = import_great_expectations()
    exp, checks = gx.expectations, data_cfg.checks
    expectations = [
        exp.ExpectColumnValuesToBeInSet(
            column="length_problem", value_set=[""], description="as many tags as tokens"
        ),
        exp.ExpectColumnValuesToBeInSet(
            column="unknown_tags", value_set=[""], description=f"tags within the tag set {tags}"
        ),
        exp.ExpectColumnValuesToBeInSet(
            column="iob2_problem",
            value_set=[""],
            description="valid IOB2: I-X continues B-X or I-X (data.repair_iob1 converts IOB1)",
        ),
        exp.ExpectColumnValuesToBeBetween(
            column="n_tokens", min_value=1, description="no empty sentences"
        ),
        exp.ExpectColumnValuesToBeInSet(
            column="types_below_share",
            value_set=[""],
            description=f"every entity type at least {checks.min_entity_type_fraction:.0%} "
            "of each split's entities",
        ),
        duplicates_expectation(exp, checks, "duplicate_sentence", "sentences"),
        train_overlap_expectation(exp, checks, "sentences"),
    ]
    if max_length is not None:
        expectations.append(
            exp.ExpectColumnValuesToBeInSet(
                column="over_max_length",
                value_set=[False],
                mostly=1.0 - checks.max_truncated_fraction,
                description=f"sentences longer than model.max_length={max_length} sub-word "
                f"tokens at most {checks.max_truncated_fraction:.0%}",
            )
        )
    return gx.ExpectationSuite(name=SUITE_NAME, expectations=expectations)


def validate_token_dataset(
    raw: RawDataset,
    data_cfg: DataConfig,
    docs_dir: Path | None = None,
    tokenizer: Any = None,
    max_length: int | None = None,
) -> ValidationReport:
    """Run the token suite over every split of ``raw``; raise on any failed expectation.

    Args:
        raw: sentences as read by :func:`components.token_data.read_token_dataset`.
        data_cfg: the tag set (``data.labels`` or inferred) and ``data.checks``.
        docs_dir: where to render Data Docs; ``None`` skips them.
        tokenizer, max_length: the base model's tokenizer and ``model.max_length`` for
            the sub-word length check; either None skips that check.

    Raises:
        DataValidationError: naming each failed rule and a few offending sentences.
    """
    tags = tag_names(data_cfg, [g for split in raw.splits.values() for g in split["tags"]])
    measured = max_length if tokenizer is not None else None
    frame = token_validation_frame(raw, data_cfg, tags, tokenizer, measured)
    # GE gets scalar columns only; the token and tag lists stay here for the messages.
    scalars = frame.drop(columns=["tokens", "tags"])
    result = run_checkpoint(scalars, build_token_suite(data_cfg, tags, measured), docs_dir)
    checks = [summarise_result(item, frame) for item in result.results]
    failures = [
        describe_token_failure(check, frame, raw, data_cfg)
        for check in checks
        if not check["success"]
    ]
    return settle_report(raw, checks, failures, docs_dir, format_token_failures)


def describe_token_failure(
    check: dict[str, Any], frame: pd.DataFrame, raw: RawDataset, data_cfg: DataConfig
) -> dict[str, Any]:
    """A failed check with its observed value and a few offending sentences."""
    failure = {key: value for key, value in check.items() if key != "unexpected_index"}
    if check["column"] == "overlaps_train":
        rows = frame[frame["overlaps_train"] == 1]
    else:
        rows = frame.loc[check.get("unexpected_index") or []]
    column = check["column"]
    failure["examples"] = failure_examples(
        rows.head(data_cfg.checks.max_failed_examples),
        raw,
        lambda row: row["text"],
        lambda row: {"problem": row[column] if column in PROBLEM_COLUMNS else None},
    )
    return failure


def format_token_failures(report: ValidationReport) -> str:
    """The error message: every failed rule, its observed value, offending sentences."""
    return format_report(
        report,
        "sentences",
        lambda failure: failure["description"],
        lambda example: (
            (f" ({example['problem']})" if example["problem"] else "") + f": {example['text']!r}"
        ),
    )


def load_tokenizer(model_base: str | None, project_root: Path) -> Any:
    """The base model's tokenizer (what the sub-word length check measures with)."""
    from transformers import AutoTokenizer

    from components.base_model import resolve_base_model

    return AutoTokenizer.from_pretrained(resolve_base_model(model_base, project_root))


def run_token_validation(
    source: str,
    config: Any,
    paths: ProjectPaths,
    report_path: Path | None = None,
    measure_subwords: bool = True,
) -> ValidationReport:
    """Read ``source`` as token data, validate it, write the JSON summary on success.

    Args:
        source: a CoNLL/JSONL file or folder (relative to the project root).
        config: the whole configuration (``data``, and ``model`` for the length check).
        paths: project paths; Data Docs go to ``paths.data_docs_dir``.
        report_path: where to write the summary of a passing run (the DVC metric).
        measure_subwords: run the sub-word length check (loads the base tokenizer).

    Raises:
        DataError: the source cannot be read.
        DataValidationError: an expectation failed; nothing is written to ``report_path``.
    """
    raw = read_token_dataset(source, config.data, paths.model_root)
    tokenizer = load_tokenizer(config.model.base, paths.project_root) if measure_subwords else None
    report = validate_token_dataset(
        raw, config.data, paths.data_docs_dir, tokenizer, config.model.max_length
    )
    return write_summary(report, report_path)
