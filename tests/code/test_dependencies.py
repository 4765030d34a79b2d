"""The declared dependencies: what the product needs, and what only the benchmark needs."""

from __future__ import annotations

import subprocess
import sys
import tomllib

from packaging.requirements import Requirement

from tests.conftest import PROJECT_ROOT

PYPROJECT = tomllib.loads((PROJECT_ROOT / "pyproject.toml").read_text(encoding="utf-8"))
# Import a module with accelerate made unimportable, as in an install without the extra.
WITHOUT_ACCELERATE = "import sys; sys.modules['accelerate'] = None; "


def names(requirements: list[str]) -> list[str]:
    return [Requirement(text).name for text in requirements]


def test_accelerate_is_only_the_benchmark_extra() -> None:
    product = names(PYPROJECT["project"]["dependencies"])
    assert "accelerate" not in product
    assert {"filelock", "packaging"} <= set(product)  # used directly: declared directly
    assert len(product) == len(set(product)), "a dependency is listed twice"
    assert names(PYPROJECT["project"]["optional-dependencies"]["bench"]) == ["accelerate"]


def test_product_packages_import_without_accelerate() -> None:
    modules = "components.finetune, components.pretrain, flows.retrain, serving.build"
    done = subprocess.run(
        [sys.executable, "-c", WITHOUT_ACCELERATE + f"import {modules}"],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]


def test_benchmark_without_accelerate_names_the_extra() -> None:
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            WITHOUT_ACCELERATE + "import runpy; sys.argv = ['train_throughput.py']; "
            "runpy.run_path('benchmarks/train_throughput.py', run_name='__main__')",
        ],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 1
    assert "the Hugging Face Trainer baselines need accelerate" in done.stderr
    assert "'.[bench]'" in done.stderr


def test_coverage_floor_is_enforced() -> None:
    assert PYPROJECT["tool"]["coverage"]["report"]["fail_under"] == 85
