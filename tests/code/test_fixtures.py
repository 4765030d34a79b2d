"""The shared fixtures' own rules: missing SST-2 skips locally and fails under CI."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import require_sst2


def test_missing_sst2_fails_loudly_under_ci(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="CI must provide it"):
        require_sst2(tmp_path / "sst2")


@pytest.mark.parametrize("value", [None, "", "false"])
def test_missing_sst2_skips_outside_ci(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, value: str | None
) -> None:
    if value is None:
        monkeypatch.delenv("CI", raising=False)
    else:
        monkeypatch.setenv("CI", value)
    with pytest.raises(pytest.skip.Exception, match=r"SST-2 not found at .*sst2"):
        require_sst2(tmp_path / "sst2")


def test_present_sst2_is_returned(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CI", "true")
    (tmp_path / "sst2").mkdir()
    (tmp_path / "sst2" / "train.tsv").write_text("sentence\tlabel\n")
    assert require_sst2(tmp_path / "sst2") == tmp_path / "sst2"
