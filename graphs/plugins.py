"""Graph and role plugins: third-party packages register them through entry points, no one edits rolegraph.

```toml
[project.entry-points."rolegraph.graphs"]
my_graph = "my_package.graphs:my_graph"      # a GraphDef, a function returning one, or a YAML spec path
[project.entry-points."rolegraph.roles"]
my_role = "my_package.roles:my_role"         # an agents Role, or a function returning one
```
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from importlib.metadata import EntryPoint, entry_points
from pathlib import Path

from rolegraph.errors import ConfigError
from rolegraph.graphs.base import GraphDef

GRAPH_GROUP = "rolegraph.graphs"
ROLE_GROUP = "rolegraph.roles"


@dataclass(frozen=True)
class PluginEntry:
    """One registered graph or role: its name, the object it names, and the distribution that ships it."""

    name: str
    value: str
    dist: str

    @property
    def source(self) -> str:
        return f"plugin {self.dist} ({self.value})"


def _entries(group: str) -> dict[str, tuple[PluginEntry, EntryPoint]]:
    found: dict[str, tuple[PluginEntry, EntryPoint]] = {}
    for point in entry_points(group=group):
        dist = f"{point.dist.name} {point.dist.version}" if point.dist is not None else "?"
        found.setdefault(point.name, (PluginEntry(point.name, point.value, dist), point))
    return found


def graph_entries() -> dict[str, PluginEntry]:
    """Graphs registered under `rolegraph.graphs`, by name."""
    return {name: entry for name, (entry, _) in _entries(GRAPH_GROUP).items()}


def role_entries() -> dict[str, PluginEntry]:
    """Roles registered under `rolegraph.roles`, by name."""
    return {name: entry for name, (entry, _) in _entries(ROLE_GROUP).items()}


def _load(group: str, name: str) -> tuple[PluginEntry, object]:
    entry, point = _entries(group)[name]
    try:
        return entry, point.load()
    except Exception as exc:
        raise ConfigError(
            f"{entry.source} for '{name}' does not load ({type(exc).__name__}: {exc})",
            f"reinstall or fix the package {entry.dist.split()[0]}",
        ) from None


def load_graph(name: str) -> GraphDef:
    """The plugin graph `name`: a GraphDef, a function returning one, or a YAML spec path (compiled)."""
    from rolegraph.graphs.spec import compile_spec

    entry, value = _load(GRAPH_GROUP, name)
    if callable(value) and not isinstance(value, GraphDef):
        value = value()
    if isinstance(value, str | Path) and str(value).endswith((".yaml", ".yml")):
        value = compile_spec(Path(value))
    if not isinstance(value, GraphDef):
        raise ConfigError(
            f"{entry.source} for '{name}' is a {type(value).__name__}, not a graph",
            "point the entry point at a GraphDef, a function returning one, or a YAML spec path",
        )
    return value


def register_plugin_roles() -> list[str]:
    """Register every plugin role with the role registry (built-in roles win); returns their names."""
    from rolegraph.agents.registry import BUILTINS, register_role
    from rolegraph.agents.role import Role

    names = []
    for name in role_entries():
        if name in BUILTINS:
            continue
        entry, value = _load(ROLE_GROUP, name)
        if callable(value) and not isinstance(value, Role):
            value = value()
        if not isinstance(value, Role):
            raise ConfigError(
                f"{entry.source} for role '{name}' is a {type(value).__name__}, not a Role",
                "point the entry point at an agents Role or a function returning one",
            )
        register_role(value if value.name == name else replace(value, name=name))
        names.append(name)
    return names
