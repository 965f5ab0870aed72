"""Which models an eval compares: every `--role SOLVER=ENDPOINT:MODEL` is one binding,
side by side in one run.

Each binding gets its own role name in the run (the solver role itself when there is one, else
`solver@1`, `solver@2`, …), so its steps, usage and episodes stay apart in the store.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from rolegraph.config import RoleBinding, RolegraphConfig, load_config, parse_role_override
from rolegraph.errors import ConfigError


@dataclass(frozen=True)
class Binding:
    """One model under evaluation: the role name the run calls it by, and how the user wrote it."""

    role: str
    label: str
    endpoint: str
    model: str | None = None


def label_of(endpoint: str, model: str | None) -> str:
    return f"{endpoint}:{model}" if model else endpoint


def solver_bindings(
    config_path: Path | None, overrides: list[str], solver_role: str = "solver"
) -> tuple[RolegraphConfig, list[Binding]]:
    """The config to run with (only the bindings' roles, so no unused endpoint is launched) and the bindings.

    Overrides of other roles apply as usual; without a `--role SOLVER=…` the config's solver binding is
    the one binding."""
    mine = [text for text in overrides if parse_role_override(text)[0] == solver_role]
    config = load_config(config_path, [text for text in overrides if text not in mine])
    base = config.roles.get(solver_role) or RoleBinding(endpoint=next(iter(config.endpoints)))
    targets = [parse_role_override(text)[1:] for text in mine] or [(base.endpoint, base.model)]
    seen: set[tuple[str, str | None]] = set()
    for (endpoint, model), text in zip(targets, mine or [solver_role], strict=True):
        if endpoint not in config.endpoints:
            known = ", ".join(sorted(config.endpoints))
            raise ConfigError(f"--role {text}: unknown endpoint '{endpoint}'", f"use one of: {known}")
        if (endpoint, model) in seen:
            raise ConfigError(f"--role {text} is given twice", "give each binding once")
        seen.add((endpoint, model))
    names = [solver_role] if len(targets) == 1 else [f"{solver_role}@{i}" for i in range(1, len(targets) + 1)]
    bindings = [
        Binding(name, label_of(endpoint, model), endpoint, model)
        for name, (endpoint, model) in zip(names, targets, strict=True)
    ]
    roles = {b.role: base.model_copy(update={"endpoint": b.endpoint, "model": b.model}) for b in bindings}
    return config.model_copy(update={"roles": roles}), bindings
