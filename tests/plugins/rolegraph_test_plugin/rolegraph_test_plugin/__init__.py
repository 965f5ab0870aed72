"""A rolegraph plugin: the `echo_check` graph (a YAML spec) and the `echoer` role, found by entry points."""

from __future__ import annotations

from pathlib import Path

from rolegraph.agents.parsers import parse_text
from rolegraph.agents.role import Role

HERE = Path(__file__).resolve().parent


def echo_check() -> object:
    """The plugin's graph, compiled from the spec shipped in the package."""
    from rolegraph.graphs.spec import compile_spec

    return compile_spec(HERE / "graph.yaml")


echoer = Role(
    name="echoer",
    template=(HERE / "echoer.md").read_text(encoding="utf-8"),
    parser=parse_text,
    sampling={"temperature": 0.0, "max_tokens": 16},
    description="repeats a word",
)


def length(text: str | None) -> dict[str, object]:
    """A trusted host-side check: how long the reply is, and whether it is short."""
    size = len(text or "")
    return {"length": size, "short": 0 < size <= 200}
