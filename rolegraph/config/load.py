"""Loading configs from YAML, the built-in default, and `--role ROLE=ENDPOINT:MODEL` overrides."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from rolegraph.config.schema import DEFAULT_ROLES, EndpointConfig, LaunchSpec, RoleBinding, RolegraphConfig
from rolegraph.errors import ConfigError

EXAMPLE_HINT = "see examples/config.yaml for a valid, annotated config"


def default_config() -> RolegraphConfig:
    """One launched endpoint serving the built-in model, bound to every built-in role."""
    return RolegraphConfig(
        endpoints={"local": EndpointConfig(launch=LaunchSpec())},
        roles={role: RoleBinding(endpoint="local") for role in DEFAULT_ROLES},
    )


def load_config(
    path: Path | str | None = None,
    role_overrides: list[str] | None = None,
    known_roles: Iterable[str] = (),
) -> RolegraphConfig:
    """Read and validate a YAML config (or the default when `path` is None), then apply overrides.
    `known_roles` adds roles an override may name besides the built-in and configured ones (a graph's)."""
    config = default_config() if path is None else _read(Path(path))
    return apply_role_overrides(config, role_overrides or [], known_roles)


def _read(path: Path) -> RolegraphConfig:
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist", "pass an existing YAML file to --config")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{path}: not valid YAML{where}", "fix the YAML syntax") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping with `endpoints` and `roles`", EXAMPLE_HINT)
    raw = _with_defaults(raw)
    try:
        return RolegraphConfig.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(f"{path}: {_first_error(exc)}", EXAMPLE_HINT) from None


def _with_defaults(raw: dict[str, Any]) -> dict[str, Any]:
    """A file may omit `endpoints` (the default launched endpoint is used) or `roles` (built-in roles)."""
    raw = dict(raw)
    raw.setdefault("endpoints", {"local": {"launch": {}}})
    if "roles" not in raw:
        first = next(iter(raw["endpoints"] or {"local": None}))
        raw["roles"] = {role: {"endpoint": first} for role in DEFAULT_ROLES}
    return raw


def _first_error(exc: ValidationError) -> str:
    err = exc.errors()[0]
    where = ".".join(str(part) for part in err["loc"])
    message = str(err["msg"]).removeprefix("Value error, ")
    return f"{where}: {message}" if where else message


def parse_role_override(text: str) -> tuple[str, str, str | None]:
    """Parse `ROLE=ENDPOINT:MODEL` (or `ROLE=ENDPOINT`) into its parts."""
    role, sep, target = text.partition("=")
    if not sep or not role or not target:
        raise ConfigError(
            f"bad --role '{text}'", "write it as ROLE=ENDPOINT:MODEL, e.g. solver=local:my-adapter"
        )
    endpoint, _, model = target.partition(":")
    return role.strip(), endpoint.strip(), (model.strip() or None)


def known_role_names(config: RolegraphConfig, extra: Iterable[str] = ()) -> list[str]:
    """Roles a command may name: the built-in and registered ones, the config's, and `extra`."""
    from rolegraph.agents.registry import list_roles

    return sorted(set(list_roles()) | set(config.roles) | set(extra))


def check_role(config: RolegraphConfig, role: str, option: str, extra: Iterable[str] = ()) -> None:
    """A ConfigError, listing the known roles, when `option` names a role nobody defines."""
    known = known_role_names(config, extra)
    if role not in known:
        raise ConfigError(f"{option}: unknown role '{role}'", f"use one of: {', '.join(known)}")


def apply_role_overrides(
    config: RolegraphConfig, overrides: list[str], known_roles: Iterable[str] = ()
) -> RolegraphConfig:
    """Rebind roles from the command line; unknown endpoints and unknown roles are errors."""
    if not overrides:
        return config
    roles = dict(config.roles)
    extra = list(known_roles)
    for text in overrides:
        role, endpoint, model = parse_role_override(text)
        check_role(config, role, f"--role {text}", extra)
        if endpoint not in config.endpoints:
            known = ", ".join(sorted(config.endpoints))
            raise ConfigError(f"--role {text}: unknown endpoint '{endpoint}'", f"use one of: {known}")
        base = roles.get(role, RoleBinding(endpoint=endpoint))
        roles[role] = base.model_copy(update={"endpoint": endpoint, "model": model})
    return config.model_copy(update={"roles": roles})
