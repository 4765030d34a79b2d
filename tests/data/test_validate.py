"""The Great Expectations suite on real GE: good data passes with Data Docs, each kind of
bad data fails with a message naming the problem, a non-zero exit, and nothing written."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from components.config import DataConfig
from components.errors import DataValidationError
from components.ingest import read_dataset
from components.validate import validate_dataset
from cli.main import get_app
from tests.conftest import make_sentiment_rows
from tests.data.conftest import write_tsv

runner = CliRunner()


def tsv_rows(count: int = 100, seed: int = 11) -> pd.DataFrame:
    return make_sentiment_rows(count, seed=seed)


def empty_file(folder: Path) -> None:
    (folder / "train.tsv").write_bytes(b"")


def missing_text_column(folder: Path) -> None:
    tsv_rows().rename(columns={"sentence": "review"}).to_csv(folder / "train.csv", index=False)


def missing_label_column(folder: Path) -> None:
    tsv_rows().drop(columns="label").to_csv(folder / "train.csv", index=False)


def null_texts(folder: Path) -> None:
    rows = tsv_rows().astype(object)
    rows.loc[[4, 9], "sentence"] = None
    rows.to_json(folder / "train.jsonl", orient="records", lines=True)


def whitespace_texts(folder: Path) -> None:
    rows = tsv_rows()
    rows.loc[[2, 7], "sentence"] = "   "
    write_tsv(folder / "train.tsv", rows)


def labels_outside_set(folder: Path) -> None:
    rows = tsv_rows()
    rows.loc[5, "label"] = 7
    write_tsv(folder / "train.tsv", rows)


def single_class(folder: Path) -> None:
    write_tsv(folder / "train.tsv", tsv_rows().assign(label=1))


def held_out_split_without_a_class(folder: Path) -> None:
    rows = tsv_rows(140)
    write_tsv(folder / "train.tsv", rows.iloc[:100])
    held_out = rows.iloc[100:]
    write_tsv(folder / "test.tsv", held_out[held_out.label == 1])  # no negatives at all


def forty_percent_duplicates(folder: Path) -> None:
    rows = tsv_rows(60)
    write_tsv(folder / "train.tsv", pd.concat([rows, rows.iloc[:40]]))


def held_out_repeats_train(folder: Path) -> None:
    rows = tsv_rows(120)
    write_tsv(folder / "train.tsv", rows.iloc[:100])
    write_tsv(folder / "test.tsv", pd.concat([rows.iloc[100:], rows.iloc[:5]]))


def held_out_repeats_train_in_other_case_or_unicode_form(folder: Path) -> None:
    import unicodedata

    rows = tsv_rows(120)
    rows.loc[0, "sentence"] = "the café was délicieux number 0"
    write_tsv(folder / "train.tsv", rows.iloc[:100])
    variants = rows.iloc[:3].copy()
    variants["sentence"] = [
        unicodedata.normalize("NFD", rows.loc[0, "sentence"]),
        rows.loc[1, "sentence"].upper(),
        rows.loc[2, "sentence"].title(),
    ]
    write_tsv(folder / "test.tsv", pd.concat([rows.iloc[100:], variants]))


def invalid_utf8(folder: Path) -> None:
    write_tsv(folder / "train.tsv", tsv_rows())
    with (folder / "train.tsv").open("ab") as handle:
        handle.write(b"caf\xe9 au lait\t1\n")


def ragged_csv(folder: Path) -> None:
    tsv_rows().to_csv(folder / "train.csv", index=False)
    with (folder / "train.csv").open("a") as handle:
        handle.write("one,too,many\n")


def repeated_header(folder: Path) -> None:
    (folder / "train.csv").write_text("sentence,label,label\ngood film,1,0\nbad film,0,1\n")


BAD_DATA: dict[str, tuple[Callable[[Path], None], str]] = {
    "empty file": (empty_file, "train.tsv is empty"),
    "missing text column": (missing_text_column, "no column 'sentence'; columns are"),
    "missing label column": (missing_label_column, "no column 'label'; columns are"),
    "nulls": (null_texts, "no null texts"),
    "whitespace-only": (whitespace_texts, "no empty or whitespace-only texts"),
    "labels outside set": (labels_outside_set, "values ['7']"),
    "single class": (single_class, "every class present"),
    "test split lacks a class": (
        held_out_split_without_a_class,
        'values ["split \'test\' has no [\'negative\']"]',
    ),
    "40% duplicates": (forty_percent_duplicates, "observed 40 of 100 rows (40.0%)"),
    "test repeats train": (held_out_repeats_train, "held-out texts also in train"),
    "test repeats train in other case or unicode form": (
        held_out_repeats_train_in_other_case_or_unicode_form,
        "at most 0 held-out texts also in train : observed 3",
    ),
    "invalid utf-8": (invalid_utf8, "invalid UTF-8 bytes b'\\xe9'"),
    "ragged csv": (ragged_csv, "3 fields where the header has 2 (ragged row)"),
    "repeated header": (repeated_header, "line 1: the header repeats column(s) ['label']"),
}


def invoke(project: Path, *args: str) -> tuple[int, str]:
    result = runner.invoke(get_app(), [*args, "--params", str(project / "params.yaml")])
    return result.exit_code, " ".join(result.output.split())  # undo rich's line wrapping


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


@pytest.mark.parametrize("case", BAD_DATA, ids=list(BAD_DATA))
def test_bad_data_stops_prepare_and_leaves_outputs_alone(
    case: str, project: Path, state_dir: Path, good_folder: Path
) -> None:
    exit_code, output = invoke(project, "prepare", "--data", str(good_folder), "--skip-validation")
    assert exit_code == 0, output
    remote = state_dir / "dvc-remote"
    (remote / "files").mkdir(parents=True)
    (remote / "files" / "object").write_text("pushed earlier")
    before = snapshot(project / "data"), snapshot(remote)

    make_bad, problem = BAD_DATA[case]
    bad = project.parent / "bad"
    bad.mkdir()
    make_bad(bad)
    exit_code, output = invoke(project, "prepare", "--data", str(bad))

    assert exit_code == 3, output
    assert problem in output
    assert (snapshot(project / "data"), snapshot(remote)) == before


def test_good_data_passes_and_writes_data_docs_and_report(
    project: Path, state_dir: Path, good_folder: Path
) -> None:
    report = project / "metrics" / "data_validation.json"
    exit_code, output = invoke(
        project, "validate", "--data", str(good_folder), "--report", str(report)
    )
    assert exit_code == 0, output
    assert "validation passed: 14 expectations" in output
    assert "dev=30" in output and "train=120" in output
    summary = json.loads(report.read_text())
    assert summary["success"] is True and summary["failed"] == 0
    assert summary["row_counts"] == {"dev": 30, "train": 120}
    docs = state_dir / "data-docs"
    assert "ratchet-data" in (docs / "index.html").read_text()
    assert list((docs / "validations").rglob("*.html"))


def test_failure_lists_every_expectation_with_observed_values_and_rows(
    tmp_path: Path, data_cfg: DataConfig
) -> None:
    rows = tsv_rows(100)
    rows.loc[3, "label"] = 9
    rows.loc[8, "sentence"] = "  "
    write_tsv(tmp_path / "train.tsv", pd.concat([rows, rows.iloc[10:30]]))
    raw = read_dataset(str(tmp_path), data_cfg, tmp_path)
    with pytest.raises(DataValidationError) as caught:
        validate_dataset(raw, data_cfg, docs_dir=None)
    failures = {f["description"]: f for f in caught.value.failures}
    assert sorted(failures) == [
        "duplicate rows at most 10%",
        "labels within the declared set ['negative', 'positive']",
        "no empty or whitespace-only texts",
    ]
    label = failures["labels within the declared set ['negative', 'positive']"]
    assert label["observed"] == "1 of 120 rows (0.8%), values ['9']"
    assert label["examples"] == [
        {"file": str(tmp_path / "train.tsv"), "line": 5, "text": rows.sentence[3], "label": "9"}
    ]
    duplicates = failures["duplicate rows at most 10%"]
    assert duplicates["observed"] == "20 of 120 rows (16.7%)"
    assert [e["line"] for e in duplicates["examples"]] == [102, 103, 104, 105, 106]
    message = str(caught.value)
    assert message.startswith("data validation failed: 3 of 14 expectations failed")
    assert f"{tmp_path / 'train.tsv'} line 10: text='  ' label='0'" in message


def test_thresholds_come_from_config(tmp_path: Path, data_cfg: DataConfig) -> None:
    forty_percent_duplicates(tmp_path)
    raw = read_dataset(str(tmp_path), data_cfg, tmp_path)
    lenient = data_cfg.model_copy(
        update={"checks": data_cfg.checks.model_copy(update={"max_duplicate_fraction": 0.5})}
    )
    report = validate_dataset(raw, lenient, docs_dir=None)
    assert report.success and report.row_counts == {"train": 100}


def test_sst2_passes_the_default_suite(sst2_dir: Path, data_cfg: DataConfig) -> None:
    small = data_cfg.model_copy(update={"max_rows": 3000})
    report = validate_dataset(read_dataset(str(sst2_dir), small, sst2_dir), small)
    assert report.success
    assert report.row_counts == {"dev": 872, "train": 3000}
