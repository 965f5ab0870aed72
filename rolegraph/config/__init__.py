"""Validated configuration: endpoints, role bindings and sampling (pydantic)."""

from rolegraph.config.load import apply_role_overrides, default_config, load_config, parse_role_override
from rolegraph.config.schema import (
    BUILTIN_MODEL,
    DEFAULT_ROLES,
    EndpointConfig,
    LaunchSpec,
    RoleBinding,
    RolegraphConfig,
    SamplingParams,
)

__all__ = [
    "BUILTIN_MODEL",
    "DEFAULT_ROLES",
    "EndpointConfig",
    "LaunchSpec",
    "RoleBinding",
    "RolegraphConfig",
    "SamplingParams",
    "apply_role_overrides",
    "default_config",
    "load_config",
    "parse_role_override",
]
