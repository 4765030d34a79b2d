"""Base-model resolution: the shipped MiniLM by default, local folders, hub ids, clear errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from components.base_model import model_fingerprint, resolve_base_model, shipped_model_dir
from components.errors import ConfigError


def test_default_is_the_minilm_folder_shipped_by_the_package() -> None:
    resolved = Path(resolve_base_model(None))
    assert resolved == shipped_model_dir()
    config = json.loads((resolved / "config.json").read_text())
    assert config["model_type"] == "bert"
    assert config["num_hidden_layers"] == 6
    assert (resolved / "model.safetensors").is_file()


def test_shipped_model_loads_offline() -> None:
    from transformers import AutoModel, AutoTokenizer

    folder = resolve_base_model(None)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModel.from_pretrained(folder)
    encoded = tokenizer(["a fine film"], return_tensors="pt")
    assert model(**encoded).last_hidden_state.shape[-1] == 384


def test_relative_local_folder_resolves_against_project_root(tiny_bert_dir: Path) -> None:
    resolved = resolve_base_model(tiny_bert_dir.name, project_root=tiny_bert_dir.parent)
    assert Path(resolved) == tiny_bert_dir.resolve()


def test_missing_local_folder_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        resolve_base_model("./models/nowhere", project_root=tmp_path)


def test_folder_without_config_json_is_a_config_error(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="without config.json"):
        resolve_base_model("empty", project_root=tmp_path)


def test_hub_ids_pass_through_for_online_users(tmp_path: Path) -> None:
    assert resolve_base_model("bert-base-uncased", project_root=tmp_path) == "bert-base-uncased"
    assert resolve_base_model("org/model", project_root=tmp_path) == "org/model"


def test_fingerprint_tracks_weights(tiny_bert_dir: Path, tmp_path: Path) -> None:
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(tiny_bert_dir, copy)
    assert model_fingerprint(str(copy)) == model_fingerprint(str(tiny_bert_dir))
    (copy / "config.json").write_text((copy / "config.json").read_text() + " ")
    assert model_fingerprint(str(copy)) != model_fingerprint(str(tiny_bert_dir))
    assert model_fingerprint("org/model") == "hub:org/model@unresolved"


def test_fingerprint_covers_every_file_at_any_depth(tiny_bert_dir: Path, tmp_path: Path) -> None:
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(tiny_bert_dir, copy)
    (copy / "1_Pooling").mkdir()
    (copy / "1_Pooling" / "config.json").write_text('{"pooling_mode_mean_tokens": true}')
    before = model_fingerprint(str(copy))
    (copy / "1_Pooling" / "config.json").write_text('{"pooling_mode_cls_token": true}')
    assert model_fingerprint(str(copy)) != before
    # A tokenizer file of a kind the old fingerprint skipped (sentencepiece's .model).
    after_subfolder = model_fingerprint(str(copy))
    (copy / "spiece.model").write_bytes(b"\x00\x01")
    assert model_fingerprint(str(copy)) != after_subfolder


def test_hub_id_is_fingerprinted_by_its_cached_snapshot_commit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import huggingface_hub.constants

    repo = tmp_path / "models--org--model"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("a" * 40)
    (repo / "snapshots" / ("a" * 40)).mkdir(parents=True)
    (repo / "snapshots" / ("a" * 40) / "config.json").write_text("{}")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    assert model_fingerprint("org/model") == f"hub:org/model@{'a' * 40}"
    (repo / "refs" / "main").write_text("b" * 40)
    (repo / "snapshots" / ("b" * 40)).mkdir(parents=True)
    (repo / "snapshots" / ("b" * 40) / "config.json").write_text("{}")
    assert model_fingerprint("org/model") == f"hub:org/model@{'b' * 40}"
