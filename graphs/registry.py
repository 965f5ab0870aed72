"""Graphs by name (built-in Python graphs and plugin graphs, imported lazily, or a YAML spec path) and their
`--set` options."""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from rolegraph.errors import ConfigError
from rolegraph.graphs.base import GraphDef

BUILTIN: dict[str, str] = {
    "promptcot": "rolegraph.graphs.promptcot.graph:PROMPTCOT",
    "cort": "rolegraph.graphs.cort.graph:CORT",
    "azr": "rolegraph.graphs.azr.graph:AZR",
}
"""Built-in graph name → `module:attribute` of its GraphDef (imported only when asked for)."""


@dataclass(frozen=True)
class GraphSource:
    """A graph `rolegraph graph list` shows: its name and where it comes from."""

    name: str
    source: str
    """`built-in`, or `plugin DIST VERSION (module:attribute)`."""


def graph_sources() -> list[GraphSource]:
    """Built-in graphs, then plugin graphs (entry point group `rolegraph.graphs`); a built-in name wins."""
    from rolegraph.graphs.plugins import graph_entries

    sources = [GraphSource(name, "built-in") for name in sorted(BUILTIN)]
    sources += [
        GraphSource(name, e.source) for name, e in sorted(graph_entries().items()) if name not in BUILTIN
    ]
    return sources


def list_graphs() -> list[str]:
    """Names of the built-in and plugin graphs."""
    return [source.name for source in graph_sources()]


def is_spec_path(name_or_path: str | Path) -> bool:
    text = str(name_or_path)
    return text.endswith((".yaml", ".yml")) or "/" in text or Path(text).is_file()


def get_graph(name_or_path: str | Path) -> GraphDef:
    """A built-in or plugin graph by name, or a GraphDef compiled (and validated) from a YAML spec path."""
    from rolegraph.graphs.plugins import graph_entries, load_graph, register_plugin_roles
    from rolegraph.graphs.spec import compile_spec

    register_plugin_roles()
    if is_spec_path(name_or_path):
        return compile_spec(Path(name_or_path))
    name = str(name_or_path)
    if name not in BUILTIN:
        if name in graph_entries():
            return load_graph(name)
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


def check_graph(name_or_path: str | Path) -> list[Any]:
    """Every problem of a spec path, or of the spec behind a named graph (`SpecProblem`s; empty when it can
    run). A named Python graph has no spec: loading it is its check."""
    from rolegraph.graphs.spec import load_spec, validate_spec

    if is_spec_path(name_or_path):
        return validate_spec(load_spec(name_or_path))
    graph = get_graph(name_or_path)
    spec = getattr(graph, "spec", None)
    return validate_spec(spec) if spec is not None else []


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
