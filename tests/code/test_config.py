"""Config loading: defaults, profile files, --set overrides, and errors that name the key."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from components.config import RatchetConfig, load_config, parse_override
from components.errors import ConfigError
from tests.conftest import PROJECT_ROOT

PARAMS = PROJECT_ROOT / "params.yaml"


# Keys where params.yaml deliberately differs from the code's default, and why. Every
# other key must hold the same value in both, so a config built without params.yaml (or a
# params file that omits a key) behaves like the shipped one.
DELIBERATE_DIFFERENCES = {
    # The shipped project pretrains on SST-2 plus a movie-review corpus beside the
    # checkout; a project on its own data should not silently read that folder.
    "pretrain.extra_corpora": (["../shared/data/movie_reviews_polarity_v2"], []),
}


def flatten(values: Any, prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}} -> {"a.b": 1}``; lists and other values are leaves."""
    if not isinstance(values, dict) or not values:
        return {prefix.rstrip("."): values}
    flat: dict[str, Any] = {}
    for key, value in values.items():
        flat.update(flatten(value, f"{prefix}{key}."))
    return flat


def test_params_yaml_spells_out_every_key_with_the_typed_default() -> None:
    # Every key is spelled out in params.yaml, so DVC sees every key a stage uses.
    in_file = flatten(yaml.safe_load(PARAMS.read_text()))
    in_code = flatten(RatchetConfig().model_dump(mode="json"))
    assert sorted(in_file) == sorted(in_code)
    differences = {
        key: (in_file[key], in_code[key]) for key in in_code if in_file[key] != in_code[key]
    }
    assert differences == DELIBERATE_DIFFERENCES
    loaded = load_config(PARAMS)
    assert loaded.registry.model_name == "ratchet-sst2"
    assert loaded.data.labels == ["negative", "positive"]
    assert loaded.gate.min_accuracy is None


def test_set_override_parses_yaml_scalars() -> None:
    config = load_config(PARAMS, overrides=["train.lr=1e-4", "pretrain.enabled=false"])
    assert config.train.lr == pytest.approx(1e-4)
    assert config.pretrain.enabled is False


def test_profile_files_merge_in_order_and_set_wins(tmp_path: Path) -> None:
    first = tmp_path / "a.yaml"
    first.write_text("train: {batch_size: 8, epochs: 3}\n")
    second = tmp_path / "b.yaml"
    second.write_text("train: {batch_size: 4}\n")
    config = load_config(PARAMS, [first, second], ["train.epochs=5"])
    assert config.train.batch_size == 4
    assert config.train.epochs == 5
    assert config.train.lr == pytest.approx(5e-5)  # untouched keys keep params.yaml values


def test_unknown_key_is_rejected_by_name() -> None:
    with pytest.raises(ConfigError, match=r"unknown key 'train\.nope'"):
        load_config(PARAMS, overrides=["train.nope=1"])


def test_wrong_type_is_rejected_by_name() -> None:
    with pytest.raises(ConfigError, match=r"'train\.lr'.*valid number"):
        load_config(PARAMS, overrides=["train.lr=abc"])


@pytest.mark.parametrize(
    "override", ["train.batch_size=0", "train.layer_lr_decay=0", "train.layer_lr_decay=1.5"]
)
def test_out_of_range_value_is_rejected_by_name(override: str) -> None:
    key = override.split("=")[0].replace(".", r"\.")
    with pytest.raises(ConfigError, match=f"'{key}'"):
        load_config(PARAMS, overrides=[override])


def test_unknown_section_in_profile_file_is_rejected(tmp_path: Path) -> None:
    profile = tmp_path / "bad.yaml"
    profile.write_text("trian: {lr: 1}\n")
    with pytest.raises(ConfigError, match="unknown key 'trian'"):
        load_config(PARAMS, [profile])


def test_missing_and_malformed_files_are_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "absent.yaml")
    broken = tmp_path / "broken.yaml"
    broken.write_text("train: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(broken)
    listing = tmp_path / "list.yaml"
    listing.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="must hold a mapping"):
        load_config(listing)


def test_override_without_equals_sign_is_rejected() -> None:
    with pytest.raises(ConfigError, match="dotted.key=value"):
        parse_override("train.lr")


def test_labels_must_be_distinct_and_at_least_two() -> None:
    with pytest.raises(ConfigError, match="at least two"):
        load_config(PARAMS, overrides=["data.labels=[only]"])
    with pytest.raises(ConfigError, match="repeated"):
        load_config(PARAMS, overrides=["data.labels=[a, a]"])


def test_config_is_frozen() -> None:
    config = load_config(PARAMS)
    with pytest.raises(ValueError, match="frozen"):
        config.train.lr = 1.0  # type: ignore[misc]


def test_section_hash_changes_only_with_its_section() -> None:
    base = load_config(PARAMS)
    changed_train = load_config(PARAMS, overrides=["train.lr=1e-3"])
    assert base.section_hash("data") == changed_train.section_hash("data")
    assert base.section_hash("train") != changed_train.section_hash("train")
    assert base.section_hash() != changed_train.section_hash()


def test_build_hash_ignores_state_upkeep_but_not_training() -> None:
    base = load_config(PARAMS)
    keep_longer = load_config(PARAMS, overrides=["tracking.cache_max_age_days=90"])
    other_lr = load_config(PARAMS, overrides=["train.lr=1e-3"])
    assert base.build_hash() == keep_longer.build_hash()  # a nightly run still skips
    assert base.section_hash() != keep_longer.section_hash()
    assert base.build_hash() != other_lr.build_hash()
