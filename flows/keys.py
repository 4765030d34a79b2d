"""Cache keys for the retrain flow: a step reruns only when something it reads changed.

A key hashes the inputs that matter (data md5, the config sections the step reads, the
upstream step's key) plus the code version, so editing any module of the
packages or the locked dependencies invalidates its cache.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

from components.fingerprints import hash_tree, update_with_file

CODE_PACKAGES = ("cli", "components", "flows", "serving")
# The packages whose version changes what training and serving compute; the full locked
# set is constraints.txt, hashed too when the checkout has it.
KEY_DISTRIBUTIONS = ("torch", "transformers", "tokenizers", "safetensors", "numpy")
CONSTRAINTS_FILE = "constraints.txt"


def project_source_root() -> Path:
    """The folder holding the Ratchet packages (the checkout's root)."""
    return Path(__file__).resolve().parents[1]


def code_version(source_root: Path | None = None) -> str:
    """sha256 over what the steps execute: every ``.py`` file of the Ratchet packages at
    any depth (by path relative to ``source_root``, so a checkout elsewhere hashes the
    same), the locked dependency set (``constraints.txt``) and the installed versions of
    the libraries that compute the model."""
    root = source_root or project_source_root()
    digest = hashlib.sha256()
    for package in CODE_PACKAGES:
        if (root / package).is_dir():
            hash_tree(digest, root / package, "*.py", prefix=f"{package}/")
    constraints = root / CONSTRAINTS_FILE
    if constraints.is_file():
        update_with_file(digest, CONSTRAINTS_FILE, constraints)
    for name, version in installed_versions(KEY_DISTRIBUTIONS).items():
        digest.update(f"{name}=={version}\n".encode())
    return digest.hexdigest()[:16]


def installed_versions(names: Sequence[str]) -> dict[str, str]:
    """``name -> version`` of the installed distributions (``missing`` when absent)."""
    versions = {}
    for name in names:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "missing"
    return versions


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
