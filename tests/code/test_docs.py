"""The README stays a short user guide, and the docs stay true to the code.

- README.md is at most 200 lines and opens with the two commands (`make demo`, `make test`);
  a new topic gets a page in docs/ and a one-line pointer there.
- Every `ratchet ...` command and `--option` shown in README.md and docs/ exists, and every
  `make` target the README names is in the Makefile.
- Every relative link in README.md and docs/ points at an existing file (and heading).
- docs/configuration.md lists every key of `RatchetConfig` with its params.yaml value and its
  `Field(description=...)`. After changing a key, a description or params.yaml, rewrite it:

      PYTHONPATH=$PWD .venv/bin/python -m tests.code.test_docs
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any, Literal, get_origin

import pytest
from pydantic import BaseModel

from tests.code.test_cli import all_command_paths
from tests.conftest import PROJECT_ROOT

README = PROJECT_ROOT / "README.md"
DOCS = sorted((PROJECT_ROOT / "docs").glob("*.md"))
CONFIG_DOC = PROJECT_ROOT / "docs" / "configuration.md"
README_MAX_LINES = 200
KEYS_START, KEYS_END = "<!-- config-keys:start -->", "<!-- config-keys:end -->"

FENCE = re.compile(r"^```.*?^```", re.MULTILINE | re.DOTALL)
INLINE_CODE = re.compile(r"`[^`\n]+`")
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
COMMAND = re.compile(r"(?:^|[\s;&|(`])(?:\.venv/bin/)?ratchet((?: [a-z][a-z-]*)+)([^#|;&`\n]*)")


def fenced_blocks(text: str) -> list[str]:
    return [block.split("\n", 1)[1].rsplit("```", 1)[0] for block in FENCE.findall(text)]


def prose(text: str) -> str:
    """The text outside code blocks and inline code spans."""
    return INLINE_CODE.sub("", FENCE.sub("", text))


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    found: set[str] = set()
    for line in FENCE.sub("", path.read_text(encoding="utf-8")).splitlines():
        if match := re.match(r"^#{1,6} (.+)$", line):
            base = slug(match.group(1))
            name, n = base, 0
            while name in found:
                n += 1
                name = f"{base}-{n}"
            found.add(name)
    return found


def test_readme_stays_short() -> None:
    lines = README.read_text(encoding="utf-8").splitlines()
    assert len(lines) <= README_MAX_LINES, (
        f"README.md has {len(lines)} lines (at most {README_MAX_LINES}): move the detail to a "
        "page in docs/ and leave a one-line pointer"
    )


def test_readme_opens_with_the_two_commands() -> None:
    text = README.read_text(encoding="utf-8")
    before_first_block = text[: text.index("```")]
    assert "\n## " not in before_first_block, "the two commands come before any section"
    commands = [
        line.split("#", 1)[0].strip()
        for line in fenced_blocks(text)[0].splitlines()
        if line.split("#", 1)[0].strip()
    ]
    assert commands == ["make demo", "make test"]


def command_tree() -> dict[tuple[str, ...], set[str]]:
    """Each command path, with the long options it accepts."""
    import typer.main

    from cli.main import get_app

    root = typer.main.get_command(get_app())
    tree: dict[tuple[str, ...], set[str]] = {}
    for path in all_command_paths():
        command: Any = root
        for name in path:
            command = command.commands[name]
        options = {opt for param in command.params for opt in param.opts if opt.startswith("--")}
        tree[tuple(path)] = options | {"--help"}
    return tree


def shown_commands(path: Path) -> list[tuple[str, list[str], list[str]]]:
    """(the line, the words after `ratchet`, the --options) of each command shown in code."""
    text = path.read_text(encoding="utf-8")
    code = fenced_blocks(text) + INLINE_CODE.findall(text)
    shown = []
    for snippet in code:
        for line in snippet.splitlines():
            for words, rest in COMMAND.findall(line):
                shown.append((line.strip(), words.split(), re.findall(r"--[a-z][a-z-]*", rest)))
    return shown


@pytest.mark.parametrize("path", [README, *DOCS], ids=lambda p: p.name)
def test_shown_commands_exist(path: Path) -> None:
    tree = command_tree()
    problems = []
    for line, words, options in shown_commands(path):
        # The longest run of words that names a command; what follows is arguments.
        command = max(
            (words[:n] for n in range(len(words) + 1) if tuple(words[:n]) in tree), key=len
        )
        groups = {p[:-1] for p in tree if p}
        if not command or tuple(command) in groups and len(words) > len(command):
            problems.append(f"{line!r}: no command 'ratchet {' '.join(words)}'")
            continue
        unknown = sorted(set(options) - tree[tuple(command)])
        if unknown:
            problems.append(f"{line!r}: 'ratchet {' '.join(command)}' has no {unknown}")
    assert not problems, "\n".join(problems)


def test_readme_make_targets_exist() -> None:
    makefile = (PROJECT_ROOT / "Makefile").read_text(encoding="utf-8")
    targets = set(re.findall(r"^([a-z][a-z-]*):", makefile, re.MULTILINE))
    named = set(re.findall(r"\bmake ([a-z][a-z-]*)\b", README.read_text(encoding="utf-8")))
    assert named and named <= targets, f"not in the Makefile: {sorted(named - targets)}"


@pytest.mark.parametrize("path", [README, *DOCS], ids=lambda p: p.name)
def test_relative_links_resolve(path: Path) -> None:
    problems = []
    for target in LINK.findall(prose(path.read_text(encoding="utf-8"))):
        if re.match(r"^[a-z]+:", target):
            continue  # http:, https:, mailto:
        file_part, _, anchor = target.partition("#")
        linked = (path.parent / file_part).resolve() if file_part else path
        if not linked.exists():
            problems.append(f"{target}: no such file")
        elif anchor and linked.suffix == ".md" and anchor not in anchors(linked):
            problems.append(f"{target}: no heading '#{anchor}' in {linked.name}")
    assert not problems, f"{path.name}:\n" + "\n".join(problems)


def type_name(annotation: Any) -> str:
    if isinstance(annotation, type) and get_origin(annotation) is None:
        return annotation.__name__
    text = str(annotation).replace("typing.", "").replace("NoneType", "null")
    return text.replace(" | ", " or ").replace("None", "null").replace("Literal[", "one of [")


def cell(text: str) -> str:
    return text.replace("|", "\\|").replace("<", "&lt;").replace(">", "&gt;")


def config_rows(model: type[BaseModel], prefix: str, values: dict[str, Any]) -> list[str]:
    rows = []
    for name, field in model.model_fields.items():
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            rows += config_rows(annotation, f"{prefix}{name}.", values[name])
            continue
        value = json.dumps(values[name])
        description = cell(field.description or "")
        rows.append(f"| `{prefix}{name}` | {type_name(annotation)} | `{value}` | {description} |")
    return rows


def config_reference() -> str:
    """The key tables of docs/configuration.md, from components/config/ and params.yaml."""
    from components.config import RatchetConfig, load_config

    values = load_config(PROJECT_ROOT / "params.yaml").model_dump(mode="json")
    parts = []
    for section, field in RatchetConfig.model_fields.items():
        assert isinstance(field.annotation, type)
        rows = config_rows(field.annotation, f"{section}.", values[section])
        header = "| key | type | params.yaml | meaning |\n|---|---|---|---|"
        parts.append(f"### `{section}`\n\n{header}\n" + "\n".join(rows))
    return "\n\n".join(parts)


def documented_reference() -> str:
    text = CONFIG_DOC.read_text(encoding="utf-8")
    return text.split(KEYS_START, 1)[1].split(KEYS_END, 1)[0].strip()


def test_configuration_reference_is_current() -> None:
    assert documented_reference() == config_reference(), (
        "docs/configuration.md is out of date with components/config/ or params.yaml; "
        "rewrite it with: PYTHONPATH=$PWD .venv/bin/python -m tests.code.test_docs"
    )


def test_type_names_read_plainly() -> None:
    assert type_name(int) == "int"
    assert type_name(int | None) == "int or null"
    assert type_name(list[str] | None) == "list[str] or null"
    assert type_name(Literal["cls", "mean"]) == "one of ['cls', 'mean']"


def rewrite_configuration_reference() -> None:
    text = CONFIG_DOC.read_text(encoding="utf-8")
    head, rest = text.split(KEYS_START, 1)
    tail = rest.split(KEYS_END, 1)[1]
    CONFIG_DOC.write_text(
        f"{head}{KEYS_START}\n{config_reference()}\n{KEYS_END}{tail}", encoding="utf-8"
    )
    print(f"rewrote {CONFIG_DOC.relative_to(PROJECT_ROOT)}", file=sys.stderr)


if __name__ == "__main__":
    rewrite_configuration_reference()
