"""The ``data`` section: where the rows come from, how they split, what they must pass."""

from __future__ import annotations

from typing import Literal

from pydantic import (
    Field,
    model_validator,
)

from components.config.base import Section


class SplitConfig(Section):
    validation_fraction: float = Field(
        0.1, gt=0, lt=1, description="Share of the training rows held out for validation."
    )
    test_fraction: float = Field(
        0.1,
        gt=0,
        lt=1,
        description="Share held out for test when the data set has no labelled test split.",
    )
    seed: int = Field(42, description="Salt of the hash that assigns rows to splits.")


class DataChecksConfig(Section):
    min_chars: int = Field(1, ge=1, description="Shortest allowed text after stripping.")
    max_chars: int = Field(10_000, ge=1, description="Longest allowed text, in characters.")
    max_duplicate_fraction: float = Field(
        0.1, ge=0, le=1, description="Largest allowed share of exact duplicate rows."
    )
    min_class_fraction: float = Field(
        0.05, ge=0, lt=1, description="Each class must make up at least this share of rows."
    )
    max_test_overlap: int = Field(
        0, ge=0, description="Test texts that may also appear in training (leakage)."
    )
    max_failed_examples: int = Field(
        5, ge=1, description="Offending rows shown per failed expectation."
    )
    max_truncated_fraction: float = Field(
        0.05,
        ge=0,
        le=1,
        description="Largest share of training or test texts allowed to be longer than "
        "model.max_length tokens (measured with the base model's tokenizer before any "
        "training; the model never sees the cut-off ends). 0.05 tolerates a long tail "
        "while stopping a window that is too short for the data (SST-2 at 128: 0); "
        "1 disables the check.",
    )
    min_entity_type_fraction: float = Field(
        0.02,
        ge=0,
        lt=1,
        description="Token classification: every entity type of the tag set makes up at "
        "least this share of each split's entities (a type missing from a split cannot be "
        "learned or scored there). Text classification uses min_class_fraction instead.",
    )


Task = Literal["text-classification", "token-classification"]
TASKS: tuple[str, ...] = ("text-classification", "token-classification")


class DataConfig(Section):
    task: Task = Field(
        "text-classification",
        description="What the model learns: text-classification (one label per text, "
        "tabular data with data.text_column/data.label_column) or token-classification "
        "(one IOB2 tag per word, e.g. named entities: CoNLL-style .txt/.conll files or "
        "JSONL rows with `tokens` and `tags` lists; data.labels is then the tag set, or "
        "null to infer it).",
    )
    source: str = Field(
        "../shared/data/sst2",
        description="A CSV/TSV/JSONL/Parquet file (one data set, split by data.split "
        "whatever its name) or a folder whose files are matched to splits by name (train, "
        "validation/valid/dev, test: train.csv, sst2_train.tsv); relative to the project "
        "root; or hf:<dataset>[/<config>] (needs the internet).",
    )
    text_column: str = Field("sentence", description="Column holding the text.")
    label_column: str = Field("label", description="Column holding the label.")
    labels: list[str] | None = Field(
        default_factory=lambda: ["negative", "positive"],
        description="Class names in id order; raw integer labels index into it. "
        "null infers them from the sorted raw values.",
    )
    label_aliases: dict[str, str] = Field(
        default_factory=dict, description="Raw label value -> class name, e.g. {pos: positive}."
    )
    slice_columns: list[str] = Field(
        default_factory=list, description="Extra columns kept for per-slice evaluation."
    )
    max_rows: int | None = Field(
        None, ge=1, description="Cap on rows read per file (cheap profiles); null reads all."
    )
    repair_iob1: bool = Field(
        False,
        description="Token classification: convert IOB1 tags (an entity may open with "
        "I-X) to IOB2 (B-X) when reading, instead of rejecting them as invalid IOB2.",
    )
    split: SplitConfig = Field(default_factory=SplitConfig)
    checks: DataChecksConfig = Field(default_factory=DataChecksConfig)

    @model_validator(mode="after")
    def _labels_distinct(self) -> DataConfig:
        if self.labels is not None:
            if len(self.labels) < 2:
                raise ValueError("data.labels needs at least two class names")
            if len(set(self.labels)) != len(self.labels):
                raise ValueError(f"data.labels has repeated names: {self.labels}")
        if self.text_column == self.label_column:
            raise ValueError("data.text_column and data.label_column must differ")
        return self
