"""Graphs by name: built-in Python graphs (imported lazily), built-in YAML specs, or a user's spec path."""

from __future__ import annotations

import importlib
from pathlib import Path

from rolegraph.errors import ConfigError
from rolegraph.graphs.base import GraphDef

SPECS_DIR = Path(__file__).resolve().parent / "specs"

BUILTIN: dict[str, str] = {
    "promptcot": "rolegraph.graphs.promptcot.graph:PROMPTCOT",
}
"""Built-in graph name → `module:attribute` of its GraphDef (imported only when asked for)."""


def list_graphs() -> list[str]:
    """Names of the built-in graphs (Python ones and YAML specs shipped in graphs/specs)."""
    return sorted(set(BUILTIN) | {p.stem for p in SPECS_DIR.glob("*.yaml")})


def is_spec_path(name_or_path: str | Path) -> bool:
    text = str(name_or_path)
    return text.endswith((".yaml", ".yml")) or "/" in text or Path(text).is_file()


def get_graph(name_or_path: str | Path) -> GraphDef:
    """A built-in graph by name, or a GraphDef compiled from a YAML spec path."""
    from rolegraph.graphs.spec import compile_spec

    if is_spec_path(name_or_path):
        return compile_spec(Path(name_or_path))
    name = str(name_or_path)
    if name in BUILTIN:
        module_name, _, attribute = BUILTIN[name].partition(":")
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            raise ConfigError(
                f"built-in graph '{name}' cannot be loaded ({exc})", "reinstall rolegraph: make setup"
            ) from None
        graph = getattr(module, attribute, None)
        if not isinstance(graph, GraphDef):
            raise ConfigError(
                f"built-in graph '{name}' is not available in this install", "reinstall rolegraph"
            )
        return graph
    spec = SPECS_DIR / f"{name}.yaml"
    if spec.is_file():
        return compile_spec(spec)
    raise ConfigError(
        f"unknown graph '{name}'", f"use one of: {', '.join(list_graphs())}, or a path to a YAML spec"
    )
