"""Unit tests for the pure pieces of the training loop: batching, masking, schedule,
checkpoints, precision choice and input checks."""

from __future__ import annotations

import random
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch

from components.config import load_config
from components.errors import ConfigError, TrainingError
from components.finetune import run_finetuning
from components.finetune_run import count_total_steps
from components.masked_lm import make_nsp_pairs, mask_tokens
from components.prepare import PreparedData
from components.pretrain import run_pretraining
from components.pretrain_corpus import chunk_token_ids, read_corpus
from components.state import ProjectPaths
from components.training import optimization, resume, runtime
from components.training.batching import length_grouped_batches, pad_batch
from components.training.checkpoints import (
    CheckpointSchedule,
    CheckpointWriter,
    TrainState,
    checkpoint_payload,
    clear_checkpoints,
    list_checkpoints,
    load_latest_checkpoint,
    save_checkpoint,
)
from components.training.loop import LoopSettings, run_loop
from components.training.optimization import linear_lr_factor
from components.training.runtime import DistributedContext, choose_precision
from tests.conftest import PROJECT_ROOT

_RNG = random.Random(1)
LENGTHS = [_RNG.randint(3, 60) for _ in range(1000)]


def test_batches_are_a_pure_function_of_seed_and_epoch() -> None:
    first = length_grouped_batches(LENGTHS, 32, seed=7, epoch=0)
    assert first == length_grouped_batches(LENGTHS, 32, seed=7, epoch=0)
    assert first != length_grouped_batches(LENGTHS, 32, seed=7, epoch=1)
    assert first != length_grouped_batches(LENGTHS, 32, seed=8, epoch=0)
    assert sorted(i for batch in first for i in batch) == list(range(len(LENGTHS)))


def test_length_grouping_cuts_padding() -> None:
    def padded_tokens(batches: list[list[int]]) -> int:
        return sum(len(b) * max(LENGTHS[i] for i in b) for b in batches)

    grouped = padded_tokens(length_grouped_batches(LENGTHS, 32, 0, 0, grouped=True))
    shuffled = padded_tokens(length_grouped_batches(LENGTHS, 32, 0, 0, grouped=False))
    assert grouped < 0.7 * shuffled
    assert grouped < 1.1 * sum(LENGTHS)


def test_ranks_get_disjoint_equal_shards() -> None:
    shards = [
        length_grouped_batches(LENGTHS, 32, 0, 0, context=DistributedContext(rank, 2))
        for rank in range(2)
    ]
    assert len(shards[0]) == len(shards[1]) > 0
    seen = [i for shard in shards for batch in shard for i in batch]
    assert len(seen) == len(set(seen))


def test_mask_tokens_follows_80_10_10_and_spares_special_tokens() -> None:
    ids = torch.randint(1000, 2000, (400, 500))
    maskable = torch.ones_like(ids, dtype=torch.bool)
    maskable[:, 0] = False
    masked, labels = mask_tokens(ids, maskable, 103, 30522, 0.15, torch.Generator().manual_seed(0))
    chosen = labels != -100
    assert not chosen[:, 0].any()
    assert torch.equal(labels[chosen], ids[chosen])
    assert chosen.float().mean().item() == pytest.approx(0.15 * 499 / 500, abs=0.005)
    became_mask = (masked[chosen] == 103).float().mean().item()
    unchanged = (masked[chosen] == ids[chosen]).float().mean().item()
    assert became_mask == pytest.approx(0.8, abs=0.01)
    assert unchanged == pytest.approx(0.1, abs=0.01)
    assert torch.equal(masked[~chosen], ids[~chosen])


def test_linear_schedule_warms_up_then_decays_to_zero() -> None:
    factors = [linear_lr_factor(step, 10, 100) for step in range(101)]
    assert factors[0] < factors[5] < factors[9] <= 1.0
    assert max(factors) == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(factors[10:], factors[11:], strict=False))
    assert factors[100] == 0.0


def test_pad_batch_pads_to_longest() -> None:
    batch = pad_batch([[5, 6, 7], [8]], pad_id=0)
    assert batch["input_ids"].tolist() == [[5, 6, 7], [8, 0, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert pad_batch([[1, 2, 3]], 0, multiple_of=8)["input_ids"].shape == (1, 8)


def test_checkpoint_round_trip_restores_rng_and_keeps_the_last_two(tmp_path: Path) -> None:
    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.AdamW(model.parameters())
    scheduler = optimization.linear_schedule(optimizer, 1, 10)
    torch.manual_seed(3)
    for step in (1, 2, 3):
        state = TrainState(step=step, epoch=1, batch_in_epoch=step * 2, best_metric=0.5)
        save_checkpoint(tmp_path, model, optimizer, scheduler, state, [runtime.capture_rng_state()])
    expected_draw = torch.rand(4)
    (tmp_path / ".tmp-step-00000004-99").mkdir()  # a write killed half-way
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step-00000002", "step-00000003"]
    loaded = load_latest_checkpoint(tmp_path)
    assert loaded is not None
    payload, state = loaded
    assert (state.step, state.batch_in_epoch, state.best_metric) == (3, 6, 0.5)
    runtime.restore_rng_state(payload["rng"][0])
    assert torch.equal(torch.rand(4), expected_draw)
    assert torch.equal(payload["model"]["weight"], model.weight.detach())


def test_background_checkpoint_holds_the_state_at_submission(tmp_path: Path) -> None:
    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.AdamW(model.parameters())
    scheduler = optimization.linear_schedule(optimizer, 1, 10)
    model(torch.ones(1, 3)).sum().backward()
    optimizer.step()
    weight_at_submit = model.weight.detach().clone()
    moment_at_submit = optimizer.state[model.weight]["exp_avg"].clone()
    writer = CheckpointWriter(tmp_path)
    state = TrainState(step=5, batch_in_epoch=5)
    writer.submit(checkpoint_payload(model, optimizer, scheduler, [{}]), state)
    state.step = 6  # the loop moves on while the write is in flight
    for _ in range(3):
        optimizer.step()  # changes weights and moments in place
    writer.wait()
    loaded = load_latest_checkpoint(tmp_path)
    assert loaded is not None
    payload, saved_state = loaded
    assert saved_state.step == 5
    assert torch.equal(payload["model"]["weight"], weight_at_submit)
    assert not torch.equal(payload["model"]["weight"], model.weight.detach())
    first_param = payload["optimizer"]["state"][0]
    assert torch.equal(first_param["exp_avg"], moment_at_submit)
    assert writer.written == [tmp_path / "step-00000005"]


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def due_steps(schedule: CheckpointSchedule, clock: FakeClock, seconds_per_step: float) -> list:
    """The steps 1..10 after which ``schedule`` checkpoints, each step taking that long."""
    due = []
    for step in range(1, 11):
        clock.now += seconds_per_step
        if schedule.due(step):
            due.append(step)
            schedule.written()
    return due


def test_checkpoint_schedule_by_steps_by_time_or_whichever_comes_first() -> None:
    clock = FakeClock()
    assert due_steps(CheckpointSchedule(4, None, clock=clock), clock, 60) == [4, 8]
    # 25 s steps: a minute has passed at steps 3, 6 and 9 (counting from each checkpoint).
    assert due_steps(CheckpointSchedule(None, 1.0, clock=clock), clock, 25) == [3, 6, 9]
    # Both: step 4 comes first, and restarts the clock; 1.5 minutes after it is step 8.
    assert due_steps(CheckpointSchedule(4, 1.5, clock=clock), clock, 25) == [4, 8]
    assert due_steps(CheckpointSchedule(100, 1.0, clock=clock), clock, 25) == [3, 6, 9]
    assert due_steps(CheckpointSchedule(None, None, clock=clock), clock, 600) == []


def test_run_key_ignores_checkpoint_cadence_but_not_what_the_run_computes(
    tmp_path: Path,
) -> None:
    paths = ProjectPaths(project_root=tmp_path, state_dir=tmp_path / "state")

    def key(*overrides: str) -> str:
        config = load_config(PROJECT_ROOT / "params.yaml", overrides=list(overrides))
        return resume.run_key(config, paths)

    base = key()
    assert key("train.checkpoint_every_minutes=30", "train.checkpoint_every_steps=7") == base
    assert key("train.lr=1e-3") != base
    assert key("model.pooling=mean") != base
    paths.prepared_dir.mkdir(parents=True)
    (paths.prepared_dir / "manifest.json").write_text('{"rows": 1}', encoding="utf-8")
    assert key() != base  # other prepared data: a different run


def test_failed_background_checkpoint_is_raised_on_the_next_wait(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the checkpoint folder should be", encoding="utf-8")
    writer = CheckpointWriter(blocker)
    writer.submit({"model": {}}, TrainState(step=1))
    with pytest.raises(TrainingError, match="writing a checkpoint to .*not-a-folder failed"):
        writer.wait()
    writer.wait()  # the error is reported once


def test_explicit_precision_is_kept_and_auto_avoids_emulated_bf16(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    cpu = torch.device("cpu")
    assert choose_precision("bf16", cpu) == "bf16"
    assert choose_precision("fp32", cpu) == "fp32"
    monkeypatch.setattr(runtime, "cpu_has_native_bf16", lambda: False)
    assert choose_precision("auto", cpu) == "fp32"
    monkeypatch.setattr(runtime, "cpu_has_native_bf16", lambda: True)
    monkeypatch.setattr(runtime, "bf16_speedup_on_cpu", lambda: 2.5)
    assert choose_precision("auto", cpu) == "bf16"


def test_a_runs_precision_is_decided_once_and_kept_for_its_resume(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    cpu, checkpoints = torch.device("cpu"), tmp_path / "checkpoints"
    monkeypatch.setattr(runtime, "cpu_has_native_bf16", lambda: True)
    measured = {"speedup": 1.1}
    monkeypatch.setattr(runtime, "bf16_speedup_on_cpu", lambda: measured["speedup"])
    # A slow timing (a busy machine) picks fp32; the resumed run keeps it, whatever its
    # own timing says, so it computes what the interrupted run did.
    assert runtime.run_precision("auto", cpu, checkpoint_dir=checkpoints) == "fp32"
    measured["speedup"] = 4.0
    assert runtime.run_precision("auto", cpu, checkpoint_dir=checkpoints) == "fp32"
    assert runtime.run_precision("auto", cpu) == "bf16"  # no checkpoints: decided afresh
    clear_checkpoints(checkpoints)  # a finished run: the next one decides again
    assert runtime.run_precision("auto", cpu, checkpoint_dir=checkpoints) == "bf16"
    clear_checkpoints(checkpoints)
    # A deterministic run decides by the CPU's features, never by a timing.
    measured["speedup"] = 0.5
    assert runtime.run_precision("auto", cpu, deterministic=True) == "bf16"
    assert runtime.run_precision("fp32", cpu, deterministic=True) == "fp32"
    monkeypatch.setattr(runtime, "cpu_has_native_bf16", lambda: False)
    assert runtime.run_precision("auto", cpu, True, checkpoints) == "fp32"


def test_total_steps_follow_epochs_accumulation_and_cap() -> None:
    assert count_total_steps(100, 2.0, 1, None) == 200
    assert count_total_steps(100, 1.0, 4, None) == 25
    assert count_total_steps(100, 3.0, 1, 50) == 50


def test_chunks_and_nsp_pairs() -> None:
    assert chunk_token_ids([[1, 2, 3, 4, 5], [6]], window=2) == [[1, 2], [3, 4], [5], [6]]
    chunks = [list(range(i, i + 10)) for i in range(0, 400, 10)]
    pairs = make_nsp_pairs(chunks, seed=0)
    assert 0.3 < np.mean([label for _, _, label in pairs]) < 0.7
    first, second, label = next(p for p in pairs if p[2] == 0)
    assert second[0] == first[-1] + 1  # a true continuation


def test_read_corpus_reads_txt_and_tsv_folders(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text("one line\n\nsecond line\n", encoding="utf-8")
    pd.DataFrame({"label": ["pos"], "text": ["a review"]}).to_csv(
        tmp_path / "b.tsv", sep="\t", index=False
    )
    (tmp_path / "SOURCE.md").write_text("not a corpus", encoding="utf-8")
    assert read_corpus(tmp_path) == ["one line", "second line", "a review"]


def frame(rows: int) -> pd.DataFrame:
    return pd.DataFrame({"text": ["a b"] * rows, "label": [0, 1] * (rows // 2)})


def test_bad_configs_fail_before_compute(tmp_path: Path) -> None:
    config = load_config(PROJECT_ROOT / "params.yaml")
    no_classes = PreparedData(frame(4), frame(2), frame(2), labels=[])
    with pytest.raises(ConfigError, match="data.labels: a classifier needs at least two"):
        run_finetuning(config, no_classes, str(tmp_path), tmp_path / "out")
    data = PreparedData(frame(4), frame(2), frame(2), labels=["negative", "positive"])
    with pytest.raises(ConfigError, match="missing-model.*not a Hugging Face model folder"):
        run_finetuning(config, data, str(tmp_path / "missing-model"), tmp_path / "out")
    not_a_bert = tmp_path / "distilbert"
    not_a_bert.mkdir()
    (not_a_bert / "config.json").write_text('{"model_type": "distilbert"}', encoding="utf-8")
    mean = load_config(PROJECT_ROOT / "params.yaml", overrides=["model.pooling=mean"])
    with pytest.raises(ConfigError, match="pooling: mean needs a BERT.*'distilbert' model"):
        run_finetuning(mean, data, str(not_a_bert), tmp_path / "out")
    with pytest.raises(ConfigError, match="'model.pooling': Input should be 'cls' or 'mean'"):
        load_config(PROJECT_ROOT / "params.yaml", overrides=["model.pooling=max"])
    with pytest.raises(ConfigError, match="'train.batch_size': Input should be greater"):
        load_config(PROJECT_ROOT / "params.yaml", overrides=["train.batch_size=0"])
    missing_base = load_config(
        PROJECT_ROOT / "params.yaml", overrides=[f"model.base={tmp_path / 'missing'}"]
    )
    with pytest.raises(ConfigError, match="model.base .* does not exist"):
        run_pretraining(missing_base, ["a text", "another text"], tmp_path / "out")
    assert not (tmp_path / "out").exists()


class LinearRegression(torch.nn.Module):
    """The smallest model with the Hugging Face contract the loop relies on (``.loss``)."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(2, 1)

    def forward(self, features: torch.Tensor, targets: torch.Tensor) -> SimpleNamespace:
        predictions = self.linear(features).squeeze(-1)
        return SimpleNamespace(loss=torch.nn.functional.mse_loss(predictions, targets))


class TwoBatches:
    features = torch.randn(8, 2, generator=torch.Generator().manual_seed(0))
    targets = features @ torch.tensor([1.5, -2.0]) + 0.5

    def epoch_batches(self, epoch: int) -> list[list[int]]:
        return [[0, 1, 2, 3], [4, 5, 6, 7]]

    def collate(self, indices: list[int], step: int) -> dict[str, torch.Tensor]:
        return {"features": self.features[indices], "targets": self.targets[indices]}


@pytest.mark.parametrize(
    ("keep", "patience", "kept_eval", "steps"),
    [
        ("best", None, 0, 5),  # the first evaluation scored highest
        ("last", None, 4, 5),
        ("last", 2, 2, 3),  # stopped early at step 3: those weights, not step 1's
    ],
)
def test_keep_chooses_the_best_validated_or_the_last_weights(
    keep: str, patience: int | None, kept_eval: int, steps: int
) -> None:
    scripted = iter([0.9, 0.5, 0.6, 0.7, 0.8])  # validation scores of evaluations 0..4
    snapshots: list[dict[str, torch.Tensor]] = []

    def evaluate(model: torch.nn.Module) -> dict[str, float]:
        snapshots.append({k: v.detach().clone() for k, v in model.state_dict().items()})
        return {"val_score": next(scripted)}

    torch.manual_seed(0)
    model = LinearRegression()
    settings = LoopSettings(
        total_steps=5,
        lr=0.1,
        weight_decay=0.0,
        warmup_fraction=0.0,
        eval_every_steps=1,
        early_stopping_patience=patience,
        keep=keep,  # type: ignore[arg-type]
        checkpoint_every_minutes=None,
    )
    outcome = run_loop(model, TwoBatches(), settings, evaluate=evaluate, metric_name="val_score")

    assert outcome.state.step == steps and len(snapshots) == steps
    assert not torch.equal(snapshots[0]["linear.weight"], snapshots[-1]["linear.weight"])
    for name, value in model.state_dict().items():
        assert torch.equal(value, snapshots[kept_eval][name]), name
    assert outcome.state.best_step == 1 and outcome.state.best_scores == {"val_score": 0.9}
    assert outcome.state.last_scores == {"val_score": [0.9, 0.5, 0.6, 0.7, 0.8][steps - 1]}


def test_a_non_finite_gradient_stops_the_run_before_the_update() -> None:
    torch.manual_seed(0)
    model = LinearRegression()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    # A finite loss whose gradient overflows, e.g. from a bad row deep in a big model.
    model.linear.weight.register_hook(lambda grad: grad * float("inf"))
    settings = LoopSettings(
        total_steps=3, lr=0.1, weight_decay=0.0, warmup_fraction=0.0, checkpoint_every_minutes=None
    )
    with pytest.raises(TrainingError, match="gradient norm became"):
        run_loop(model, TwoBatches(), settings)
    for name, value in model.state_dict().items():
        assert torch.equal(value, before[name]), name


def test_a_checkpoint_resumes_only_with_the_number_of_processes_that_wrote_it(
    tmp_path: Path,
) -> None:
    model = LinearRegression()
    optimizer = optimization.build_optimizer(model, 0.1, 0.0, torch.device("cpu"))
    scheduler = optimization.linear_schedule(optimizer, 0, 5)
    two_ranks = [runtime.capture_rng_state(), runtime.capture_rng_state()]
    state = TrainState(step=2, batch_in_epoch=2, world_size=2)
    save_checkpoint(tmp_path, model, optimizer, scheduler, state, two_ranks)
    settings = LoopSettings(total_steps=5, lr=0.1, weight_decay=0.0, warmup_fraction=0.0)

    with pytest.raises(TrainingError, match="written by 2 process.*this run has 1"):
        run_loop(model, TwoBatches(), settings, checkpoint_dir=tmp_path)
    # A checkpoint of this run's own size resumes where it stopped.
    state.world_size = 1
    save_checkpoint(tmp_path, model, optimizer, scheduler, state, two_ranks[:1])
    resumed = run_loop(model, TwoBatches(), settings, checkpoint_dir=tmp_path)
    assert resumed.metrics["steps"] == 5 and resumed.metrics["samples_seen"] == 3 * 4


def test_run_key_follows_the_init_model(tmp_path: Path, tiny_bert_dir: Path) -> None:
    import shutil

    from components.base_model import model_fingerprint

    paths = ProjectPaths(project_root=tmp_path, state_dir=tmp_path / "state")
    config = load_config(PROJECT_ROOT / "params.yaml")
    other = tmp_path / "other-init"
    shutil.copytree(tiny_bert_dir, other)
    (other / "config.json").write_text((other / "config.json").read_text() + " ")
    key_a = resume.run_key(config, paths, model_fingerprint(str(tiny_bert_dir)))
    assert key_a == resume.run_key(config, paths, model_fingerprint(str(tiny_bert_dir)))
    assert key_a != resume.run_key(config, paths, model_fingerprint(str(other)))


def test_a_checkpoint_resumes_only_the_run_that_wrote_it(
    tmp_path: Path, tiny_bert_dir: Path
) -> None:
    """Kill `ratchet train --init A`, run `--init B`: B must not resume A's weights."""
    import shutil

    from components.finetune import finetune_resume_key

    config = load_config(PROJECT_ROOT / "params.yaml", overrides=["train.max_steps=1"])
    data = PreparedData(frame(8), frame(4), frame(4), labels=["negative", "positive"])
    init_b = tmp_path / "init-b"
    shutil.copytree(tiny_bert_dir, init_b)
    (init_b / "config.json").write_text((init_b / "config.json").read_text() + " ")
    key_a = finetune_resume_key(config, data, str(tiny_bert_dir))
    key_b = finetune_resume_key(config, data, str(init_b))
    assert key_a != key_b
    # What the run with init A left when it was killed.
    checkpoints = tmp_path / "checkpoints"
    resume.claim_checkpoint_dir(checkpoints, key_a)
    model = LinearRegression()
    optimizer = optimization.build_optimizer(model, 0.1, 0.0, torch.device("cpu"))
    scheduler = optimization.linear_schedule(optimizer, 0, 5)
    rng = [runtime.capture_rng_state()]
    save_checkpoint(checkpoints, model, optimizer, scheduler, TrainState(step=1), rng)
    with pytest.raises(TrainingError) as refused:
        run_finetuning(config, data, str(init_b), tmp_path / "out", checkpoints)
    message = str(refused.value)
    assert key_a in message and key_b in message and f"Delete {checkpoints}" in message
    assert not (tmp_path / "out").exists()
    assert list_checkpoints(checkpoints)  # refused, not deleted
    # Checkpoints that record no key (written before keys were recorded) are refused too.
    (checkpoints / resume.RUN_KEY_FILE).unlink()
    with pytest.raises(TrainingError, match="its key is not recorded"):
        run_finetuning(config, data, str(tiny_bert_dir), tmp_path / "out", checkpoints)
    # An empty folder, or one the same run wrote, is taken.
    fresh = tmp_path / "fresh"
    resume.claim_checkpoint_dir(fresh, key_a)
    resume.claim_checkpoint_dir(fresh, key_a)
    assert (fresh / resume.RUN_KEY_FILE).read_text() == key_a
    resume.claim_checkpoint_dir(fresh, key_b)  # nothing to resume: it records B now
    assert (fresh / resume.RUN_KEY_FILE).read_text() == key_b


def test_extra_corpora_lines_that_repeat_held_out_texts_are_left_out(tmp_path: Path) -> None:
    """MLM on the test sentences is leakage, even when a corpus spells them differently."""
    from components.prepare import write_prepared
    from components.pretrain_corpus import gather_pretraining_texts

    paths = ProjectPaths(project_root=tmp_path, state_dir=tmp_path / "state")
    labelled = pd.DataFrame(
        {"text": ["a train text", "the test sentence", "a validation café"], "label": [0, 1, 0]}
    )
    labelled["label_name"] = labelled["label"].map({0: "negative", 1: "positive"})
    split = {
        "train": labelled.iloc[[0]],
        "test": labelled.iloc[[1]],
        "validation": labelled.iloc[[2]],
    }
    write_prepared(PreparedData(labels=["negative", "positive"], **split), paths.prepared_dir)
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(
        "THE TEST SENTENCE\nan unrelated review\nA   validation cafe\u0301\n", encoding="utf-8"
    )
    config = load_config(
        PROJECT_ROOT / "params.yaml", overrides=[f"pretrain.extra_corpora=[{corpus}]"]
    )
    gathered = gather_pretraining_texts(config, paths)
    assert gathered.texts == ["a train text", "an unrelated review"]
    assert gathered.held_out_dropped == 2
    assert gathered.metrics == {"corpus_held_out_dropped": 2.0}
