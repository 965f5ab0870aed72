"""Validated configuration: endpoints, role bindings and sampling (pydantic)."""

from rolegraph.config.load import (
    apply_role_overrides,
    check_role,
    default_config,
    known_role_names,
    load_config,
    parse_role_override,
)
from rolegraph.config.schema import (
    BUILTIN_MODEL,
    DEFAULT_ROLES,
    EndpointConfig,
    LaunchSpec,
    RoleBinding,
    RolegraphConfig,
    SamplingParams,
    TrainConfig,
)

__all__ = [
    "BUILTIN_MODEL",
    "DEFAULT_ROLES",
    "EndpointConfig",
    "LaunchSpec",
    "RoleBinding",
    "RolegraphConfig",
    "SamplingParams",
    "TrainConfig",
    "apply_role_overrides",
    "check_role",
    "default_config",
    "known_role_names",
    "load_config",
    "parse_role_override",
]
