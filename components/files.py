"""Files and folders written so that a crash leaves the old version or the new, never half.

Every writer builds the new version in a hidden sibling (``.<name>.tmp-<pid>``) and renames
it into place: a rename within a folder is atomic, so a reader (DVC, a resumed run, the
registry) sees either the old file or the complete new one.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

PARTIAL_MARK = ".tmp-"


def partial_path(target: Path) -> Path:
    """The hidden sibling a new version of ``target`` is written to, unique to this process."""
    return target.with_name(f".{target.name}{PARTIAL_MARK}{os.getpid()}")


def write_atomically(path: Path, content: str | bytes) -> None:
    """Write ``content`` (text as UTF-8) to ``path`` through a temporary sibling and a rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = partial_path(path)
    try:
        if isinstance(content, str):
            partial.write_text(content, encoding="utf-8")
        else:
            partial.write_bytes(content)
        os.replace(partial, path)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise


def replace_folder(new: Path, target: Path) -> None:
    """Swap ``new`` into ``target`` with renames; the old folder is deleted last, so a
    crash leaves either the old folder or the new one in place, never neither."""
    old = target.with_name(f".{target.name}.old-{os.getpid()}")
    if target.exists():
        target.rename(old)
    new.rename(target)
    shutil.rmtree(old, ignore_errors=True)


@contextmanager
def atomic_dir(target: Path) -> Iterator[Path]:
    """An empty hidden folder beside ``target`` to fill; it replaces ``target`` (see
    :func:`replace_folder`) when the block ends, and is removed if the block raises."""
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = partial_path(target)
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir()
    try:
        yield partial
        replace_folder(partial, target)
    finally:
        shutil.rmtree(partial, ignore_errors=True)  # gone already after a successful swap


def save_pretrained_atomically(model: Any, tokenizer: Any, output_dir: Path) -> None:
    """A Hugging Face model and tokenizer (``save_pretrained``, safetensors) as one folder."""
    with atomic_dir(output_dir) as partial:
        model.save_pretrained(partial, safe_serialization=True)
        tokenizer.save_pretrained(partial)


def write_metrics(path: Path, metrics: dict[str, float], info: dict[str, str]) -> None:
    """A stage's metrics JSON (the file DVC declares): metrics rounded to 6 places, plus
    the non-numeric facts under ``info``."""
    payload = {**{k: round(v, 6) for k, v in metrics.items()}, "info": info}
    write_atomically(path, json.dumps(payload, indent=2, sort_keys=True) + "\n")
