"""Drift decisions over reference and traffic tables (components/monitoring.py)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from components.config import DataConfig, MonitorConfig, RatchetConfig
from components.errors import ConfigError
from components.events import emit_ratchet_event
from components.feedback import read_store
from components.feedback_data import add_feedback
from components.monitoring import TEST_NAMES, check_drift, mmd_test
from components.traffic import parse_duration, read_traffic

CONFIG = MonitorConfig(min_texts=50, max_texts=400, permutations=1000)


def feature_table(count: int, seed: int, shift: float = 0.0) -> pd.DataFrame:
    """Texts' features; ``shift`` moves every distribution (0: the reference's)."""
    rng = np.random.default_rng(seed)
    positive = rng.random(count) < 0.5 + shift / 2
    return pd.DataFrame(
        {
            "label": np.where(positive, "positive", "negative"),
            "confidence": rng.beta(8 - 4 * shift, 2, count),
            "length": rng.normal(100 + 80 * shift, 20, count).round(),
            "tokens": rng.normal(20, 5, count).round(),
            "unk_rate": rng.random(count) * 0.01 * (1 + 5 * shift),
            "ascii_letter_share": rng.normal(0.8 - 0.1 * shift, 0.03, count),
            "uppercase_share": rng.normal(0.02 + 0.1 * shift, 0.01, count),
            "embedding": list(rng.normal(shift, 1, (count, 16))),
        }
    )


def test_traffic_like_the_reference_is_no_drift() -> None:
    result = check_drift(feature_table(400, 0), feature_table(300, 1), CONFIG, {"texts": 300})
    assert result.drift is False and result.exit_code == 0
    assert set(result.tests) == set(TEST_NAMES)
    assert all(test.p_value >= test.threshold for test in result.tests.values())
    assert result.tests["confidence"].threshold == pytest.approx(0.01 / 7)
    assert result.reason.startswith("no drift: all 7 tests have p >= 0.00143")


def test_shifted_traffic_drifts_and_names_the_tests() -> None:
    result = check_drift(feature_table(400, 0), feature_table(300, 1, shift=0.5), CONFIG, {})
    assert result.drift is True and result.exit_code == 1
    assert result.tests["text_length"].drift and result.tests["embedding_mmd"].drift
    assert result.reason.startswith("drift in ")
    summary = result.to_dict()
    assert set(summary) == {"drift", "reason", "tests", "window"}
    assert set(summary["tests"]["embedding_mmd"]) == {"statistic", "p_value", "threshold", "drift"}


def test_the_drift_picture_has_a_panel_per_test_marked_where_it_drifted(tmp_path: Path) -> None:
    from components.monitoring_plots import label_shares, panel_title, plot_drift

    reference, current = feature_table(400, 0), feature_table(300, 1, shift=0.5)
    result = check_drift(reference, current, CONFIG, {"texts": 300, "requests": 30})
    path = plot_drift(reference, current, result, tmp_path / "drift.png")
    assert path.read_bytes()[:4] == b"\x89PNG"
    assert panel_title("text_length", result.tests["text_length"]).endswith("(DRIFT)")
    shares = label_shares(pd.Series(["a", "a", "b"]), pd.Series(["b", "c"]))
    assert shares.to_dict() == {
        "reference": {"a": 2 / 3, "b": 1 / 3, "c": 0.0},
        "traffic": {"a": 0.0, "b": 0.5, "c": 0.5},
    }


def test_too_little_traffic_is_not_enough_data_never_an_alarm() -> None:
    shifted = feature_table(49, 1, shift=1.0)  # one text short of min_texts, and very shifted
    result = check_drift(feature_table(400, 0), shifted, CONFIG, {"texts": 49})
    assert result.drift is None and result.exit_code == 3 and result.tests == {}
    assert result.reason == (
        "not enough data: 49 texts served by the champion in the window, monitor.min_texts is 50"
    )


def test_mmd_separates_shifted_embeddings_only() -> None:
    rng = np.random.default_rng(3)
    reference = rng.normal(0, 1, (200, 8))
    same = mmd_test(reference, rng.normal(0, 1, (150, 8)), 0.01, 200, rng)
    shifted = mmd_test(reference, rng.normal(0.5, 1, (150, 8)), 0.01, 200, rng)
    assert same.p_value > 0.05 and not same.drift
    assert shifted.p_value == pytest.approx(1 / 201) and shifted.drift
    assert shifted.statistic > 5 * same.statistic


def test_too_few_permutations_for_the_threshold_is_a_config_error() -> None:
    config = MonitorConfig(min_texts=50, permutations=500)
    with pytest.raises(ConfigError, match="monitor.permutations=500 cannot give a p-value under"):
        check_drift(feature_table(100, 0), feature_table(100, 1), config, {})


def test_window_durations_parse_and_a_bad_one_names_the_format() -> None:
    assert [parse_duration(text) for text in ("24h", "30m", "1.5d", "90s")] == [
        86_400,
        1_800,
        129_600,
        90,
    ]
    with pytest.raises(ConfigError, match="--since '24 hours': expected a number and a unit"):
        parse_duration("24 hours")


def test_the_log_reader_keeps_the_window_and_skips_a_line_cut_by_a_kill(tmp_path: Path) -> None:
    data = tmp_path / "classify" / "data"
    data.mkdir(parents=True)
    lines = [json.dumps({"time": when, "label": "positive"}) for when in (100.0, 200.0, 300.0)]
    (data / "data.0.log.2026-11-29").write_text(lines[0] + "\n")
    (data / "data.0.log").write_text(lines[1] + "\n" + lines[2] + "\n" + '{"time": 310, "lab')
    frame = read_traffic(tmp_path, since=150, until=300)
    assert frame["time"].tolist() == [200.0, 300.0]
    assert read_traffic(tmp_path / "nothing-logged", since=0).empty


def test_feedback_store_keeps_the_last_label_of_a_text(tmp_path: Path) -> None:
    store = tmp_path / "feedback.jsonl"
    records = [("Good film", "negative"), ("dull", "negative"), ("good  film", "positive")]
    lines = [json.dumps({"text": text, "label": label}) for text, label in records]
    store.write_text("\n".join(lines) + "\n" + '{"text": "cut')
    assert read_store(store).to_dict("records") == [
        {"text": "dull", "label": "negative"},
        {"text": "good  film", "label": "positive"},
    ]


def test_feedback_joins_train_only_and_never_a_held_out_text() -> None:
    train = pd.DataFrame(
        {"text": ["a fine film", "dull"], "label": [1, 0], "label_name": ["positive", "negative"]}
    )
    validation = pd.DataFrame({"text": ["Seen In Validation"]})
    test = pd.DataFrame({"text": ["seen in test"]})
    feedback = pd.DataFrame(
        {
            "text": ["A fine film", "seen in validation", "seen in TEST", "new text", "odd"],
            "label": ["negative", "positive", "positive", "positive", "neutral"],
        }
    )
    merged, added = add_feedback(
        train, [validation, test], feedback, DataConfig(), ["negative", "positive"]
    )
    assert added == 2
    assert merged.to_dict("records") == [
        {"text": "dull", "label": 0, "label_name": "negative"},
        {"text": "A fine film", "label": 0, "label_name": "negative"},
        {"text": "new text", "label": 1, "label_name": "positive"},
    ]


def test_drift_is_announced_once_per_champion_version(
    state_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mlflow import MlflowClient

    from flows import monitor as monitor_flow

    client = MlflowClient()
    client.create_registered_model("ratchet-sst2")
    version = client.create_model_version("ratchet-sst2", source=str(state_dir)).version
    emitted: list[tuple[str, str, str | None, str | None]] = []

    def fake_emit(
        name: str, model: str, payload: dict, version: str | None = None, params: str | None = None
    ) -> bool:
        emitted.append((name, model, version, params))
        return True

    monkeypatch.setattr("components.events.emit_ratchet_event", fake_emit)
    summary = {"drift": True, "window": {"until": "2026-11-30T02:00:00+00:00"}}
    config = RatchetConfig()
    params = "pipelines/ner/params.yaml"
    assert monitor_flow.announce_drift(config, str(version), summary, params) is True
    assert monitor_flow.announce_drift(config, str(version), summary, params) is False
    assert emitted == [("ratchet.drift.detected", "ratchet-sst2", str(version), params)]
    tags = client.get_model_version("ratchet-sst2", str(version)).tags
    assert tags["monitor.drift_event"] == "2026-11-30T02:00:00+00:00"


def test_events_need_a_prefect_server(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    assert emit_ratchet_event("ratchet.feedback.ready", "ratchet-sst2", {"rows": 3}) is False


def test_the_model_card_shows_how_many_feedback_rows_a_version_learnt_from() -> None:
    from components.model_card import CardInputs, render_model_card
    from components.registry import LINEAGE_TAGS

    tags = {"feedback_rows": "12", "feedback_data_md5": "0a1b.dir", "mlflow.user": "x"}
    card = render_model_card(
        CardInputs(
            model_name="ratchet-sst2",
            version="4",
            labels=["negative", "positive"],
            metrics={"accuracy": 0.9},
            lineage={key: tags[key] for key in LINEAGE_TAGS if key in tags},
            data_source="../shared/data/sst2",
            base_model="tiny",
            training={},
        )
    )
    assert "| feedback_rows | `12` |" in card and "| feedback_data_md5 | `0a1b.dir` |" in card


def test_serve_passes_the_log_settings_and_the_server_reads_them(tmp_path: Path) -> None:
    from serving.traffic_log import (
        TrafficSettings,
        feedback_path,
        monitor_options,
        settings_from_environment,
        traffic_log_environment,
    )

    config = RatchetConfig.model_validate(
        {"serving": {"log_texts": True}, "monitor": {"keep_days": 7}}
    )
    settings = settings_from_environment(traffic_log_environment(config, tmp_path))
    assert settings == TrafficSettings(
        log_dir=str(tmp_path / "traffic"),
        exporter="file",
        log_texts=True,
        keep_days=7,
        feedback_file=str(tmp_path / "feedback" / "feedback.jsonl"),
    )
    exporter, options = monitor_options(settings)
    assert (exporter, options["log_path"]) == ("default", str(tmp_path / "traffic"))
    assert "backupCount: 7" in Path(options["log_config_file"]).read_text()
    otlp = TrafficSettings(log_dir="unused", exporter="otlp", otlp_endpoint="http://c:4318")
    assert monitor_options(otlp) == ("otlp", {"endpoint": "http://c:4318"})
    assert feedback_path(TrafficSettings(log_dir=str(tmp_path / "traffic"))) == (
        tmp_path / "feedback" / "feedback.jsonl"
    )


def test_the_log_writer_takes_everything_pending_in_blocks() -> None:
    import collections

    from serving.traffic_log import drain

    pending: collections.deque = collections.deque("abcde")
    assert drain(pending, most=2) == [["a", "b"], ["c", "d"], ["e"]]
    assert not pending
    assert drain(pending) == []
