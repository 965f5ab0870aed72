"""Where rolegraph keeps models, adapters, server state and caches ($ROLEGRAPH_HOME)."""

from __future__ import annotations

import os
from pathlib import Path


def home() -> Path:
    """The rolegraph home directory (default ~/.cache/rolegraph), created on first use."""
    root = Path(os.environ.get("ROLEGRAPH_HOME", Path.home() / ".cache" / "rolegraph")).expanduser()
    root.mkdir(parents=True, exist_ok=True)
    return root


def models_dir() -> Path:
    return _sub("models")


def adapters_dir() -> Path:
    return _sub("adapters")


def servers_dir() -> Path:
    """State and logs of vLLM servers launched by rolegraph."""
    return _sub("servers")


def cache_dir() -> Path:
    return _sub("cache")


def _sub(name: str) -> Path:
    path = home() / name
    path.mkdir(parents=True, exist_ok=True)
    return path
