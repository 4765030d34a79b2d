"""The house rules for the product code (cli, components, flows, serving): no module over
500 lines, no function over 80, no import cycle. Tests and benchmarks are exempt."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

from tests.conftest import PROJECT_ROOT

PACKAGES = ("cli", "components", "flows", "serving")
MAX_MODULE_LINES = 500
MAX_FUNCTION_LINES = 80


def product_modules(root: Path) -> dict[str, Path]:
    """Dotted module name -> file, for every module of the product packages."""
    modules = {}
    for package in PACKAGES:
        for path in sorted((root / package).rglob("*.py")):
            parts = path.relative_to(root).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            modules[name] = path
    return modules


def long_modules(modules: dict[str, Path]) -> dict[str, int]:
    lengths = {name: len(path.read_text().splitlines()) for name, path in modules.items()}
    return {name: lines for name, lines in lengths.items() if lines > MAX_MODULE_LINES}


def function_lengths(path: Path) -> Iterator[tuple[str, int]]:
    """(name, lines) of every function in ``path``, decorators included."""
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            first = min([node.lineno, *(d.lineno for d in node.decorator_list)])
            yield node.name, (node.end_lineno or node.lineno) - first + 1


def long_functions(modules: dict[str, Path]) -> dict[str, int]:
    return {
        f"{name}.{function}": lines
        for name, path in modules.items()
        for function, lines in function_lengths(path)
        if lines > MAX_FUNCTION_LINES
    }


def imported_modules(path: Path, known: set[str]) -> set[str]:
    """The product modules ``path`` imports anywhere (a function-level import included:
    it hides a cycle from the interpreter, not from a reader)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found & known


def import_cycles(modules: dict[str, Path]) -> list[list[str]]:
    """The strongly connected groups of more than one module (Tarjan's algorithm)."""
    graph = {name: imported_modules(path, set(modules)) - {name} for name, path in modules.items()}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def visit(module: str) -> None:
        index[module] = low[module] = len(index)
        stack.append(module)
        for other in graph[module]:
            if other not in index:
                visit(other)
                low[module] = min(low[module], low[other])
            elif other in stack:
                low[module] = min(low[module], index[other])
        if low[module] == index[module]:
            group = [stack.pop()]
            while group[-1] != module:
                group.append(stack.pop())
            if len(group) > 1:
                cycles.append(sorted(group))

    for module in graph:
        if module not in index:
            visit(module)
    return cycles


def test_no_module_is_over_500_lines() -> None:
    assert long_modules(product_modules(PROJECT_ROOT)) == {}


def test_no_function_is_over_80_lines() -> None:
    assert long_functions(product_modules(PROJECT_ROOT)) == {}


def test_no_import_cycle() -> None:
    assert import_cycles(product_modules(PROJECT_ROOT)) == []


def write_package(root: Path, files: dict[str, str]) -> dict[str, Path]:
    for relative, text in files.items():
        (root / relative).parent.mkdir(parents=True, exist_ok=True)
        (root / relative).write_text(text)
    return product_modules(root)


def test_the_checks_catch_what_they_guard_against(tmp_path: Path) -> None:
    long_body = "".join(f"    x{i} = {i}\n" for i in range(80))
    modules = write_package(
        tmp_path,
        {
            "components/__init__.py": "",
            "components/a.py": "from components import b\n",
            "components/b.py": "def late():\n    import components.a\n",
            "components/c.py": f"@decorated\ndef long():\n{long_body}" + "\n" * 420,
        },
    )
    assert long_modules(modules) == {"components.c": 502}
    assert long_functions(modules) == {"components.c.long": 82}
    assert import_cycles(modules) == [["components.a", "components.b"]]
