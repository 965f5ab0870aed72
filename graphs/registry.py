"""Graphs by name (built-in Python graphs, imported lazily, or a YAML spec path) and their `--set` options."""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from rolegraph.errors import ConfigError
from rolegraph.graphs.base import GraphDef

BUILTIN: dict[str, str] = {
    "promptcot": "rolegraph.graphs.promptcot.graph:PROMPTCOT",
}
"""Built-in graph name → `module:attribute` of its GraphDef (imported only when asked for)."""


def list_graphs() -> list[str]:
    """Names of the built-in graphs."""
    return sorted(BUILTIN)


def is_spec_path(name_or_path: str | Path) -> bool:
    text = str(name_or_path)
    return text.endswith((".yaml", ".yml")) or "/" in text or Path(text).is_file()


def get_graph(name_or_path: str | Path) -> GraphDef:
    """A built-in graph by name, or a GraphDef compiled (and validated) from a YAML spec path."""
    from rolegraph.graphs.spec import compile_spec

    if is_spec_path(name_or_path):
        return compile_spec(Path(name_or_path))
    name = str(name_or_path)
    if name not in BUILTIN:
        raise ConfigError(
            f"unknown graph '{name}'", f"use one of: {', '.join(list_graphs())}, or a path to a YAML spec"
        )
    module_name, _, attribute = BUILTIN[name].partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(
            f"built-in graph '{name}' cannot be loaded ({exc})", "reinstall rolegraph: make setup"
        ) from None
    graph = getattr(module, attribute, None)
    if not isinstance(graph, GraphDef):
        raise ConfigError(f"built-in graph '{name}' is not available in this install", "reinstall rolegraph")
    return graph


def check_options(graph: GraphDef, options: dict[str, Any]) -> dict[str, Any]:
    """`options` unchanged when the graph accepts them: an unknown key or a bad value is a one-line
    ConfigError listing the graph's keys. A graph without an options model accepts anything."""
    model = getattr(graph, "options", None)
    if model is None:
        return options
    known = list(model.model_fields)
    listing = f"use one of: {', '.join(known)}" if known else f"drop --set: '{graph.name}' takes no options"
    for key in options:
        if key not in model.model_fields:
            raise ConfigError(f"graph '{graph.name}' has no option '{key}'", listing)
    try:
        model.model_validate(options)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(part) for part in err["loc"])
        message = str(err["msg"]).removeprefix("Value error, ")
        raise ConfigError(f"graph '{graph.name}': --set {where}: {message}", listing) from None
    return options
