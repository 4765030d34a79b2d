"""The retrain flow's pure pieces: cache keys, the run record, retry classification."""

from __future__ import annotations

import re
from pathlib import Path

import httpx
import pytest

from components.base_model import model_fingerprint
from components.errors import ConfigError, DataValidationError
from flows.keys import cache_key_from_argument, code_version, step_key
from flows.retrain import ensure_dvc_sees_data_config
from flows.run_record import RunRecord, render_report
from flows.tasks import is_transient
from tests.conftest import PROJECT_ROOT


def test_step_key_is_stable_and_sensitive_to_every_input() -> None:
    key = step_key("train", "md5-a", "cfg-1", "base-x")
    assert key == step_key("train", "md5-a", "cfg-1", "base-x")
    assert key.startswith("train-")
    assert key != step_key("train", "md5-b", "cfg-1", "base-x")
    assert key != step_key("train", "md5-a", "cfg-2", "base-x")
    assert key != step_key("pretrain", "md5-a", "cfg-1", "base-x")
    # Parts are separated, so shifting characters between them changes the key.
    assert step_key("train", "ab", "c") != step_key("train", "a", "bc")


def test_cache_key_comes_from_the_argument() -> None:
    assert cache_key_from_argument(None, {"cache_key": "train-123", "other": 1}) == "train-123"


def test_code_version_hashes_this_checkout_by_default() -> None:
    version = code_version()
    assert re.fullmatch(r"[0-9a-f]{16}", version)
    assert version == code_version(PROJECT_ROOT)  # the checkout's own packages
    # A folder without the packages hashes only the library versions: a different key.
    assert code_version(PROJECT_ROOT / "docs") != version


def test_code_version_covers_every_package_and_the_locked_dependencies(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import shutil

    from flows import keys

    for package in keys.CODE_PACKAGES:
        shutil.copytree(PROJECT_ROOT / package, tmp_path / package)
    shutil.copyfile(PROJECT_ROOT / "constraints.txt", tmp_path / "constraints.txt")
    original = code_version(tmp_path)
    assert original == code_version(PROJECT_ROOT)  # relative names: a copy hashes the same

    def changed(path: Path, text: str) -> str:
        saved = path.read_bytes()
        path.write_bytes(saved + text.encode())
        try:
            return code_version(tmp_path)
        finally:
            path.write_bytes(saved)

    assert code_version(tmp_path) == original  # stable across calls on an unchanged tree
    assert changed(tmp_path / "components" / "config" / "gate.py", "\n# edited\n") != original
    assert changed(tmp_path / "flows" / "retrain.py", "\n# edited\n") != original
    assert changed(tmp_path / "serving" / "service.py", "\n# edited\n") != original
    # Only Python sources count: notes beside them do not change what the steps execute.
    (tmp_path / "components" / "NOTES.md").write_text("a note\n")
    assert code_version(tmp_path) == original
    (tmp_path / "components" / "NOTES.md").unlink()
    nested = tmp_path / "components" / "sub"
    nested.mkdir()
    (nested / "helper.py").write_text("VALUE = 1\n")
    with_nested = code_version(tmp_path)
    assert with_nested != original
    assert changed(nested / "helper.py", "VALUE = 2\n") != with_nested
    (nested / "helper.py").unlink()
    nested.rmdir()
    assert changed(tmp_path / "constraints.txt", "torch==0.0.1\n") != original
    assert code_version(tmp_path) == original
    real_versions = keys.installed_versions
    monkeypatch.setattr(
        keys,
        "installed_versions",
        lambda names: {**real_versions(names), "transformers": "0.0.0"},
    )
    assert code_version(tmp_path) != original


def test_run_record_survives_a_round_trip_through_disk(tmp_path: Path) -> None:
    record = RunRecord("id-1", "brave-otter", tmp_path / "reports" / "brave-otter.json")
    record.add_step("validate", "done", 1.234)
    record.add_step("train", "cached", 0.5, {"model_dir": "/m"})
    record.update_summary(outcome="promoted", registered_version="3")

    loaded = RunRecord.load(record.path)

    assert [(step.name, step.status) for step in loaded.steps] == [
        ("validate", "done"),
        ("train", "cached"),
    ]
    assert loaded.steps[1].outputs == {"model_dir": "/m"}
    assert loaded.summary == {"outcome": "promoted", "registered_version": "3"}
    assert not list(record.path.parent.glob("*.tmp")), "the atomic write left a temp file"


def test_report_names_outcome_steps_and_cause(tmp_path: Path) -> None:
    record = RunRecord("id-1", "brave-otter", tmp_path / "r.json")
    record.add_step("validate", "failed", 2.0)
    markdown = render_report(record, "failed", "label 7 is not in [negative, positive]")
    assert markdown.startswith("# Retrain run `brave-otter`: failed")
    assert "| validate | failed | 2.0 |" in markdown
    assert "label 7 is not in" in markdown


def test_data_settings_must_come_from_params_yaml() -> None:
    from components.config import load_config

    params = str(PROJECT_ROOT / "params.yaml")
    ensure_dvc_sees_data_config(load_config(params, overrides=["train.lr=1e-4"]), params)
    changed = load_config(params, overrides=["data.max_rows=10"])
    with pytest.raises(ConfigError, match=r"data\.max_rows differ"):
        ensure_dvc_sees_data_config(changed, params)


def test_only_network_errors_are_retried() -> None:
    assert is_transient(ConnectionRefusedError("refused"))
    assert is_transient(httpx.ConnectTimeout("slow"))
    wrapped = RuntimeError("push failed")
    wrapped.__cause__ = TimeoutError("remote timed out")
    assert is_transient(wrapped)
    assert not is_transient(DataValidationError("label 7 unknown"))
    assert not is_transient(FileNotFoundError("constraints.txt"))


def test_pretrain_key_follows_the_bytes_of_the_extra_corpora(
    tmp_path: Path, tiny_bert_dir: Path
) -> None:
    from components.config import load_config
    from components.state import ProjectPaths
    from flows.caches import training_keys

    corpus = tmp_path / "corpus.txt"
    corpus.write_text("a first unlabelled line\nanother line\n", encoding="utf-8")
    config = load_config(
        PROJECT_ROOT / "params.yaml",
        overrides=[f"model.base={tiny_bert_dir}", f"pretrain.extra_corpora=[{corpus}]"],
    )
    paths = ProjectPaths(project_root=tmp_path, state_dir=tmp_path / "state")
    md5s = {"prepared_data_md5": "abc.dir"}
    before = training_keys(config, paths, md5s)
    assert training_keys(config, paths, md5s) == before
    corpus.write_text("a first unlabelled line\nan edited line\n", encoding="utf-8")
    after = training_keys(config, paths, md5s)
    assert after["pretrain"] != before["pretrain"]
    assert after["train"] != before["train"]  # it starts from the pretrained model


def test_force_discards_the_checkpoints_of_its_keys(tmp_path: Path) -> None:
    from components.state import ProjectPaths
    from flows.caches import discard_checkpoints

    paths = ProjectPaths(project_root=tmp_path, state_dir=tmp_path / "state")
    for key in ("pretrain-1", "train-2", "train-other"):
        (paths.checkpoints_dir / key / "step-00000010").mkdir(parents=True)
    discard_checkpoints(paths, {"pretrain": "pretrain-1", "train": "train-2"})
    assert sorted(p.name for p in paths.checkpoints_dir.iterdir()) == ["train-other"]


def test_retrain_slot_admits_one_retrain_of_a_model_at_a_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import threading
    import time

    from components.config import load_config
    from components.state import ProjectPaths
    from flows.slots import retrain_slot

    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    config = load_config(PROJECT_ROOT / "params.yaml")
    other_model = load_config(PROJECT_ROOT / "params.yaml", overrides=["registry.model_name=b"])
    paths = ProjectPaths(project_root=tmp_path, state_dir=tmp_path / "state")
    events: list[str] = []

    def second_retrain() -> None:
        with retrain_slot(config, paths):
            events.append("second entered")

    with retrain_slot(config, paths):
        assert (paths.state_dir / "retrain-ratchet-sst2.lock").exists()
        waiting = threading.Thread(target=second_retrain)
        waiting.start()
        with retrain_slot(other_model, paths):  # another model's slot is free
            events.append("other model entered")
        time.sleep(0.5)
        events.append("first leaves")
    waiting.join(timeout=10)
    assert events == ["other model entered", "first leaves", "second entered"]


def test_retrain_slot_of_a_killed_run_is_free_again(tmp_path: Path) -> None:
    import os
    import subprocess
    import sys
    import threading

    from components.config import load_config
    from components.state import ProjectPaths
    from flows.slots import retrain_slot

    hold = (
        "import sys, time\n"
        "from pathlib import Path\n"
        "from components.config import load_config\n"
        "from components.state import ProjectPaths\n"
        "from flows.slots import retrain_slot\n"
        "paths = ProjectPaths(project_root=Path(sys.argv[1]), state_dir=Path(sys.argv[1]))\n"
        "with retrain_slot(load_config(sys.argv[2]), paths):\n"
        "    print('held', flush=True)\n"
        "    time.sleep(60)\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    holder = subprocess.Popen(
        [sys.executable, "-c", hold, str(tmp_path), str(PROJECT_ROOT / "params.yaml")],
        cwd=PROJECT_ROOT,
        env=env,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
    finally:
        holder.kill()
        holder.wait()
    paths = ProjectPaths(project_root=tmp_path, state_dir=tmp_path)
    entered = threading.Event()

    def next_retrain() -> None:
        with retrain_slot(load_config(PROJECT_ROOT / "params.yaml"), paths):
            entered.set()

    threading.Thread(target=next_retrain, daemon=True).start()
    assert entered.wait(timeout=20), "the killed holder's slot was not released"


def test_training_keys_follow_the_params_the_pipeline_declares(tiny_bert_dir: Path) -> None:
    """The flow's cache keys hash exactly the params keys dvc.yaml lists for a stage, so a
    setting that reruns `dvc repro`'s pretrain stage (train.precision) reruns the flow's."""
    from components.config import load_config
    from components.model_stages import MODEL_NODES
    from components.pipeline import PIPELINE
    from components.state import ProjectPaths
    from flows.caches import training_keys

    assert list(MODEL_NODES) == PIPELINE.names("model")
    params = PROJECT_ROOT / "params.yaml"
    settings = [f"model.base={tiny_bert_dir}", "pretrain.extra_corpora=[]"]
    paths = ProjectPaths(project_root=PROJECT_ROOT, state_dir=PROJECT_ROOT / ".ratchet")
    md5s = {"prepared_data_md5": "abc.dir"}
    keys = training_keys(load_config(params, overrides=settings), paths, md5s)
    fp32 = training_keys(
        load_config(params, overrides=[*settings, "train.precision=fp32"]), paths, md5s
    )
    assert list(keys) == ["pretrain", "train"]
    assert fp32["pretrain"] != keys["pretrain"]
    # With pretraining off, training starts from the base: the key is the one it always was.
    config = load_config(params, overrides=[*settings, "pretrain.enabled=false"])
    base = step_key("base", model_fingerprint(str(tiny_bert_dir)))
    expected = step_key(
        "train", "abc.dir", config.section_hash("train", "model"), base, code_version()
    )
    assert training_keys(config, paths, md5s, str(tiny_bert_dir)) == {"train": expected}
