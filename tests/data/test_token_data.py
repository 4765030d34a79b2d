"""Token-classification data: CoNLL and JSONL reading, malformed files, IOB repair, prepare."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from components.config import DataConfig
from components.errors import DataError
from components.ingest import RawDataset
from components.token_data import (
    iob1_to_iob2,
    iob2_problem,
    infer_tag_set,
    read_token_dataset,
    read_token_file,
)
from components.token_prepare import (
    load_prepared_tokens,
    prepare_token_splits,
    write_prepared_tokens,
)

CONLL = """-DOCSTART- O

EU B-ORG
rejects O
German B-MISC
call O

Peter B-PER
Blackburn I-PER

-DOCSTART- O

BRUSSELS B-LOC
1996-08-22 O
"""


def token_cfg(**changes: object) -> DataConfig:
    return DataConfig.model_validate({"task": "token-classification", "labels": None, **changes})


def write(path: Path, content: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8")
    return path


def test_conll_sentences_skip_docstart_and_keep_their_first_line(tmp_path: Path) -> None:
    frame = read_token_file(write(tmp_path / "train.txt", CONLL))
    assert frame["tokens"].tolist() == [
        ["EU", "rejects", "German", "call"],
        ["Peter", "Blackburn"],
        ["BRUSSELS", "1996-08-22"],
    ]
    assert frame["tags"].tolist()[1] == ["B-PER", "I-PER"]
    assert frame["line"].tolist() == [3, 8, 13]
    assert frame["text"].tolist()[1] == "Peter Blackburn"


def test_conll_tag_is_the_last_column(tmp_path: Path) -> None:
    frame = read_token_file(write(tmp_path / "a.conll", "EU NNP B-NP B-ORG\nsays VBZ B-VP O\n"))
    assert frame["tokens"].tolist() == [["EU", "says"]]
    assert frame["tags"].tolist() == [["B-ORG", "O"]]


def test_jsonl_sentences(tmp_path: Path) -> None:
    rows = [{"tokens": ["Paris", "calls"], "tags": ["B-LOC", "O"]}, {"tokens": [], "tags": []}]
    path = write(tmp_path / "train.jsonl", "\n".join(json.dumps(r) for r in rows) + "\n")
    frame = read_token_file(path)
    assert frame["tokens"].tolist() == [["Paris", "calls"], []]
    assert frame["line"].tolist() == [1, 2]


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("r.txt", "EU B-ORG\nrejects X O\n", "r.txt line 2: 3 columns where the file's lines have 2 (ragged columns)"),
        ("t.txt", "EU B-ORG\n O\n", "t.txt line 2: a tag without a token ('O' is indented)"),
        ("o.txt", "EU B-ORG\nrejects\n", "o.txt line 2: one column ('rejects')"),
        ("u.txt", b"EU B-ORG\n\nM\xfcller B-PER\n", "u.txt line 3: invalid UTF-8 bytes b'\\xfc'"),
        ("j.jsonl", '{"tokens": ["a"], "tags": ["O"]}\n{"tokens": "a b", "tags": []}\n', "j.jsonl line 2: 'tokens' must be a list of strings"),
        ("k.jsonl", '{"tokens": ["a"], "tags": ["O"]}\n[1, 2]\n', "k.jsonl line 2: expected a JSON object per line"),
        ("e.txt", "-DOCSTART- O\n\n", "e.txt has no sentences"),
    ],
)
def test_malformed_files_name_file_and_line(
    tmp_path: Path, name: str, content: str | bytes, message: str
) -> None:
    with pytest.raises(DataError) as raised:
        read_token_file(write(tmp_path / name, content))
    assert message in str(raised.value)


def test_folder_of_conll_splits(tmp_path: Path) -> None:
    for name in ("train", "valid", "test"):
        write(tmp_path / "conll" / f"{name}.txt", CONLL)
    write(tmp_path / "conll" / "SOURCE.md", "# notes")
    raw = read_token_dataset(str(tmp_path / "conll"), token_cfg(max_rows=2), tmp_path)
    assert raw.row_counts == {"test": 2, "train": 2, "dev": 2}
    assert raw.files["dev"].endswith("valid.txt")


def test_hf_sources_are_refused_for_tokens(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="token classification reads local CoNLL or JSONL"):
        read_token_dataset("hf:conll2003", token_cfg(), tmp_path)


def test_iob1_repair_and_iob2_problems() -> None:
    iob1 = ["I-PER", "I-PER", "O", "I-LOC", "B-LOC", "I-ORG"]
    assert iob2_problem(iob1) == "token 1: I-PER follows O"
    assert iob1_to_iob2(iob1) == ["B-PER", "I-PER", "O", "B-LOC", "B-LOC", "B-ORG"]
    assert iob2_problem(iob1_to_iob2(iob1)) == ""
    assert iob2_problem(["B-PER", "I-LOC"]) == "token 2: I-LOC follows B-PER"


def test_repair_iob1_when_reading(tmp_path: Path) -> None:
    path = write(tmp_path / "train.txt", "Peter I-PER\nBlackburn I-PER\n")
    assert read_token_file(path, repair=True)["tags"].tolist() == [["B-PER", "I-PER"]]
    assert read_token_file(path)["tags"].tolist() == [["I-PER", "I-PER"]]


def test_inferred_tag_set_is_o_then_b_i_per_sorted_type() -> None:
    assert infer_tag_set([["B-PER", "O"], ["I-LOC"]]) == ["O", "B-LOC", "I-LOC", "B-PER", "I-PER"]


def sentences(count: int, offset: int = 0) -> list[tuple[list[str], list[str]]]:
    return [([f"Name{offset + i}", "visited", "Paris"], ["B-PER", "O", "B-LOC"]) for i in range(count)]


def raw_tokens(splits: dict[str, list[tuple[list[str], list[str]]]]) -> RawDataset:
    import pandas as pd

    frames = {
        name: pd.DataFrame(
            {
                "tokens": [t for t, _ in rows],
                "tags": [g for _, g in rows],
                "text": [" ".join(t) for t, _ in rows],
                "line": range(1, len(rows) + 1),
            }
        )
        for name, rows in splits.items()
    }
    return RawDataset(source="inline", splits=frames)


def test_prepare_keeps_given_splits_dedupes_train_and_round_trips(tmp_path: Path) -> None:
    train = sentences(20) + sentences(2)  # two duplicates
    test = sentences(5, offset=100) + sentences(1, offset=100)
    raw = raw_tokens({"train": train, "dev": sentences(4, offset=50), "test": test})
    prepared = prepare_token_splits(raw, token_cfg())
    assert prepared.labels == ["O", "B-LOC", "I-LOC", "B-PER", "I-PER"]
    assert [len(prepared.split(n)) for n in ("train", "validation", "test")] == [20, 4, 6]
    assert prepared.train["tag_ids"][0] == [3, 0, 1]
    manifest = write_prepared_tokens(prepared, tmp_path / "prepared", "inline")
    assert manifest["task"] == "token-classification"
    assert manifest["splits"]["train"]["entity_counts"] == {"LOC": 20, "PER": 20}
    loaded = load_prepared_tokens(tmp_path / "prepared")
    assert loaded.labels == prepared.labels
    assert loaded.test["tokens"].tolist() == prepared.test["tokens"].tolist()
    assert loaded.train["tag_ids"].tolist() == prepared.train["tag_ids"].tolist()


def test_prepare_carves_validation_and_test_from_one_file() -> None:
    raw = raw_tokens({"all": sentences(400)})
    prepared = prepare_token_splits(raw, token_cfg())
    sizes = [len(prepared.split(n)) for n in ("train", "validation", "test")]
    assert sum(sizes) == 400 and all(30 < size for size in sizes[1:])


def test_prepare_refuses_unknown_tags() -> None:
    raw = raw_tokens({"all": [(["a", "b"], ["O", "B-PER"])] * 3})
    with pytest.raises(DataError, match="unknown tags \\['B-PER'\\]"):
        prepare_token_splits(raw, token_cfg(labels=["O", "B-LOC", "I-LOC"]))


def test_load_prepared_tokens_needs_token_manifest(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no prepared token-classification data"):
        load_prepared_tokens(tmp_path)


def test_pretraining_reads_the_token_sentences(tmp_path: Path) -> None:
    from components.config import load_config
    from components.pretrain_corpus import gather_pretraining_texts
    from components.state import ProjectPaths
    from tests.conftest import PROJECT_ROOT

    paths = ProjectPaths(project_root=tmp_path, state_dir=tmp_path / "state")
    raw = raw_tokens({"train": sentences(3), "dev": sentences(1, 10), "test": sentences(1, 20)})
    write_prepared_tokens(prepare_token_splits(raw, token_cfg()), paths.prepared_dir)
    config = load_config(
        PROJECT_ROOT / "params.yaml",
        [PROJECT_ROOT / "configs" / "conll.yaml"],
        ["pretrain.extra_corpora=[]"],
    )
    corpus = gather_pretraining_texts(config, paths)
    assert corpus.texts == ["Name0 visited Paris", "Name1 visited Paris", "Name2 visited Paris"]
