"""Which models exist (built-in, prepared, local directories) and how a name becomes vLLM's `--model`."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from rolegraph import paths
from rolegraph.errors import ModelNotFoundError
from rolegraph.models.prepare import BUILTIN_MODELS, MARKER, is_prepared, model_dir, prepare_model


@dataclass(frozen=True)
class ModelInfo:
    """One row of `rolegraph models list`."""

    name: str
    kind: str
    """'built-in' (preparable offline) or 'prepared' (a directory under $ROLEGRAPH_HOME/models)."""
    prepared: bool
    path: Path | None
    description: str = ""


def list_models() -> list[ModelInfo]:
    """The built-in models (prepared or not) and every other prepared directory under the models home."""
    rows = []
    for name, builtin in sorted(BUILTIN_MODELS.items()):
        path = model_dir(name)
        ready = is_prepared(path)
        rows.append(ModelInfo(name, "built-in", ready, path if ready else None, builtin.description))
    for path in sorted(paths.models_dir().iterdir()):
        if path.name in BUILTIN_MODELS or path.name.startswith(".") or not is_prepared(path):
            continue
        rows.append(ModelInfo(path.name, "prepared", True, path, _marker_description(path)))
    return rows


def _marker_description(path: Path) -> str:
    try:
        return str(json.loads((path / MARKER).read_text()).get("source", ""))
    except (OSError, ValueError):
        return ""


def resolve_model(name_or_path: str, *, prepare: bool = True) -> tuple[str, str]:
    """Map a model reference to (what vLLM's `--model` gets, the served model name).

    Order: a built-in name (prepared on demand), a prepared name under the models home, a local Hugging
    Face directory, then a hub id `org/name` passed through to vLLM unchanged.
    """
    if name_or_path in BUILTIN_MODELS:
        path = prepare_model(name_or_path) if prepare else model_dir(name_or_path)
        return str(path), name_or_path
    prepared = paths.models_dir() / name_or_path
    if "/" not in name_or_path and is_prepared(prepared):
        return str(prepared), name_or_path
    local = Path(name_or_path).expanduser()
    if local.is_dir():
        if not (local / "config.json").is_file():
            raise ModelNotFoundError(
                f"{local} is not a Hugging Face model directory (no config.json)",
                "point `model` at a directory written by save_pretrained",
            )
        return str(local.resolve()), local.resolve().name
    if _looks_like_hub_id(name_or_path):
        return name_or_path, name_or_path
    known = ", ".join(m.name for m in list_models()) or "none"
    raise ModelNotFoundError(
        f"model '{name_or_path}' is not a built-in model, a prepared model, a directory or a hub id",
        f"use one of: {known}, an existing HF directory, or org/name from the hub",
    )


def _looks_like_hub_id(text: str) -> bool:
    parts = text.split("/")
    local_prefix = text.startswith(("/", ".", "~"))
    return len(parts) == 2 and all(parts) and not local_prefix
