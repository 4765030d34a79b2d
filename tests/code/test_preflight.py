"""Preflight: what the configuration and the prepared data allow is checked before any
training, and the error names the setting to change (issue 21: a 3-class set trained for
7.5 minutes, then stopped at evaluation over the behaviour suite's labels)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from cli.main import get_app
from components.config import RatchetConfig, load_config
from components.errors import ConfigError, DataError
from components.preflight import preflight
from components.state import ProjectPaths
from tests.conftest import PROJECT_ROOT

THREE = ["negative", "neutral", "positive"]
SUITE_FOR_TWO = (
    "labels: [negative, positive]\n"
    "checks:\n  - {name: x, type: MFT, texts: [great], expect_label: positive}\n"
)
AUTO_NOTICE = (
    "eval.behaviour_checks is auto and no shipped suite is written for labels "
    "['negative', 'neutral', 'positive']: no behavioural checks run (name a suite file to "
    "add some)"
)
NAMED_SUITE_ERROR = (
    "eval.behaviour_checks names two-class.yaml, a suite for labels ['negative', "
    "'positive'], but the data's labels are ['negative', 'neutral', 'positive']"
)


def three_class_split(count: int, offset: int) -> pd.DataFrame:
    ids = [index % 3 for index in range(count)]
    words = ["awful", "okay", "great"]
    return pd.DataFrame(
        {
            "text": [f"tweet {offset + i} was {words[label]}" for i, label in enumerate(ids)],
            "label": pd.Series(ids, dtype="int64"),
            "label_name": [THREE[label] for label in ids],
        }
    )


def tweet_project(root: Path, manifest: dict | None = None) -> Path:
    """A project whose data/prepared holds a 3-class tweet-sentiment set, with the shipped
    suites (configs/behaviour) and a 2-class suite file of its own."""
    prepared = root / "data" / "prepared"
    prepared.mkdir(parents=True)
    shutil.copy(PROJECT_ROOT / "params.yaml", root / "params.yaml")
    shutil.copytree(PROJECT_ROOT / "configs" / "behaviour", root / "configs" / "behaviour")
    (root / "two-class.yaml").write_text(SUITE_FOR_TWO)
    for offset, name in enumerate(("train", "validation", "test")):
        three_class_split(24, 100 * offset).to_parquet(prepared / f"{name}.parquet", index=False)
    (prepared / "manifest.json").write_text(json.dumps(manifest or {"labels": THREE}))
    return root


def settings(tiny_bert_dir: Path, *overrides: str) -> RatchetConfig:
    return load_config(
        PROJECT_ROOT / "params.yaml",
        [PROJECT_ROOT / "configs" / "smoke.yaml"],
        [f"model.base={tiny_bert_dir}", "data.labels=null", *overrides],
    )


def preflight_error(
    error: type[Exception], config: RatchetConfig, paths: ProjectPaths, base_model: str
) -> str:
    """The message of the ``error`` the preflight raises."""
    with pytest.raises(error) as raised:
        preflight(config, paths, base_model)
    return str(raised.value)


def test_three_classes_pass_the_auto_suite_with_a_notice_and_fail_a_named_one(
    tmp_path: Path, state_dir: Path, tiny_bert_dir: Path
) -> None:
    paths = ProjectPaths.discover(tweet_project(tmp_path / "p"))
    assert preflight(settings(tiny_bert_dir), paths, str(tiny_bert_dir)) == [AUTO_NOTICE]
    # A suite named explicitly for other labels stops the run, naming the setting.
    named = settings(tiny_bert_dir, "eval.behaviour_checks=two-class.yaml")
    assert preflight_error(ConfigError, named, paths, str(tiny_bert_dir)).startswith(
        NAMED_SUITE_ERROR
    )
    two = settings(tiny_bert_dir, "data.labels=[negative,positive]")
    (paths.prepared_dir / "manifest.json").write_text('{"labels": ["negative", "positive"]}')
    assert preflight(two, paths, str(tiny_bert_dir)) == [
        "eval.behaviour_checks auto: configs/behaviour/sentiment-en.yaml matches labels "
        "['negative', 'positive']"
    ]


def test_stale_or_missing_prepared_data_says_to_prepare_again(
    tmp_path: Path, state_dir: Path, tiny_bert_dir: Path
) -> None:
    paths = ProjectPaths.discover(tmp_path / "empty")
    with pytest.raises(DataError, match=r"no prepared data at .*: run `ratchet prepare`"):
        preflight(settings(tiny_bert_dir), paths, str(tiny_bert_dir))
    tagged = {"task": "token-classification", "labels": ["O", "B-PER", "I-PER"]}
    paths = ProjectPaths.discover(tweet_project(tmp_path / "ner", tagged))
    assert preflight_error(DataError, settings(tiny_bert_dir), paths, str(tiny_bert_dir)) == (
        "data/prepared holds token-classification data, but data.task is "
        "'text-classification': run `ratchet prepare` after changing data.task (or set "
        "data.task: token-classification)"
    )
    paths = ProjectPaths.discover(tweet_project(tmp_path / "p"))
    config = settings(tiny_bert_dir, "data.labels=[neg,pos]")
    assert preflight_error(DataError, config, paths, str(tiny_bert_dir)) == (
        "data/prepared was made for labels ['negative', 'neutral', 'positive'], but "
        "data.labels is ['neg', 'pos']: run `ratchet prepare` after changing data.labels"
    )


def test_a_base_model_offline_or_without_the_task_head_or_tokenizer_names_model_base(
    tmp_path: Path, state_dir: Path, tiny_bert_dir: Path
) -> None:
    from transformers import ViTConfig

    paths = ProjectPaths.discover(tweet_project(tmp_path / "p"))
    config = settings(tiny_bert_dir)
    assert preflight_error(ConfigError, config, paths, "no-such-org/no-such-model") == (
        "model.base 'no-such-org/no-such-model' is a Hugging Face hub id that is not in the "
        "local cache, and HF_HUB_OFFLINE is set: set model.base to a local model folder "
        "(save_pretrained output), or to null for the shipped all-MiniLM-L6-v2, or load it "
        "once while online"
    )
    vision = tmp_path / "vit"
    ViTConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2).save_pretrained(vision)
    with pytest.raises(ConfigError) as raised:
        preflight(settings(tiny_bert_dir), paths, str(vision), stages=("train",))
    assert str(raised.value).startswith(
        f"model.base {vision} is a 'vit' model, which transformers cannot build as "
        "AutoModelForSequenceClassification ("
    )
    with pytest.raises(ConfigError, match="cannot build as AutoModelForMaskedLM"):
        preflight(settings(tiny_bert_dir), paths, str(vision))  # pretraining first
    scratch = settings(tiny_bert_dir, "pretrain.from_scratch=true")  # a new BERT: tokenizer only
    with pytest.raises(ConfigError, match=r"model.base .*vit: its tokenizer does not load"):
        preflight(scratch, paths, str(vision))
    untokenized = tmp_path / "no-tokenizer"
    untokenized.mkdir()
    shutil.copy(tiny_bert_dir / "config.json", untokenized / "config.json")
    with pytest.raises(ConfigError, match="no-tokenizer: its tokenizer knows no words"):
        preflight(settings(tiny_bert_dir), paths, str(untokenized))
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "config.json").write_text("{not json")
    with pytest.raises(ConfigError, match="is not a loadable Hugging Face model folder"):
        preflight(settings(tiny_bert_dir), paths, str(tmp_path / "broken"), model_setting="--init")


def test_token_classification_needs_a_fast_tokenizer(
    tmp_path: Path, state_dir: Path, tiny_bert_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import transformers

    from components.preflight import check_tokenizer

    check_tokenizer("token-classification", str(tiny_bert_dir), "model.base")
    words = {"input_ids": [1996, 2143]}
    slow = type(
        "Slow", (), {"is_fast": False, "unk_token_id": 100, "__call__": lambda *a, **k: words}
    )()
    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", lambda *a, **k: slow)
    with pytest.raises(ConfigError, match="has only a slow tokenizer, but data.task token-"):
        check_tokenizer("token-classification", str(tiny_bert_dir), "model.base")
    check_tokenizer("text-classification", str(tiny_bert_dir), "model.base")


def test_ratchet_train_stops_before_training_on_a_suite_for_other_labels(
    tmp_path: Path, state_dir: Path, tiny_bert_dir: Path
) -> None:
    project = tweet_project(tmp_path / "p")
    options = [
        "--params", str(project / "params.yaml"),
        "--config", str(PROJECT_ROOT / "configs" / "smoke.yaml"),
        "--set", f"model.base={tiny_bert_dir}",
        "--set", "data.labels=null",
        "--set", "train.max_steps=2",
    ]  # fmt: skip
    runner = CliRunner()
    named = ["--set", "eval.behaviour_checks=two-class.yaml"]
    result = runner.invoke(get_app(), [*options, *named, "train"])
    assert result.exit_code == 2, result.output
    assert NAMED_SUITE_ERROR in " ".join(result.output.split())
    assert not (project / "models").exists() and not (project / "metrics").exists()
    assert not (state_dir / "checkpoints").exists()

    result = runner.invoke(get_app(), [*options, "train"])  # auto: a notice, then training
    assert result.exit_code == 0, result.output
    output = " ".join(result.output.split())
    assert output.startswith(AUTO_NOTICE) and "after 2 steps" in output
    assert (project / "models" / "finetuned" / "config.json").is_file()


def test_a_hub_id_the_hub_cannot_serve_fails_in_one_request(
    tmp_path: Path, state_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import huggingface_hub
    from huggingface_hub import constants

    from components.preflight import load_model_config

    asked = []

    def unreachable(self: object, repo_id: str, timeout: float) -> None:
        asked.append((repo_id, timeout))
        raise ConnectionError("Name or service not known")

    monkeypatch.setattr(constants, "is_offline_mode", lambda: False)
    monkeypatch.setattr(huggingface_hub.HfApi, "model_info", unreachable)
    with pytest.raises(ConfigError) as raised:
        load_model_config("some-org/some-model")
    assert asked == [("some-org/some-model", 10)]
    assert (
        "is a Hugging Face hub id that is not in the local cache, and the hub cannot be "
        "reached or does not have it (ConnectionError: Name or service not known): set "
        "model.base to a local model folder" in str(raised.value)
    )
