"""Cache keys for the retrain flow: a step reruns only when something it reads changed.

A key hashes the inputs that matter (data md5, the config sections the step reads, the
upstream step's key) plus the code version, so editing a component invalidates its cache.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import components

CODE_PACKAGES = ("components",)


def code_version() -> str:
    """sha256 over the source of the component modules (what the steps execute)."""
    digest = hashlib.sha256()
    package_dir = Path(components.__file__).parent
    for source in sorted(package_dir.glob("*.py")):
        digest.update(source.name.encode())
        digest.update(source.read_bytes())
    return digest.hexdigest()[:16]


def step_key(step: str, *parts: Any) -> str:
    """A short stable key for ``step`` from its inputs."""
    digest = hashlib.sha256(step.encode())
    for part in parts:
        digest.update(b"\x00")
        digest.update(str(part).encode())
    return f"{step}-{digest.hexdigest()[:20]}"


def cache_key_from_argument(context: Any, parameters: dict[str, Any]) -> str:
    """Prefect ``cache_key_fn``: tasks receive their key as the ``cache_key`` argument."""
    return str(parameters["cache_key"])
