"""Hand-off: hot-load a published adapter into the endpoint serving a role, then swap the role's binding.

Order matters for "no request fails": the adapter is loaded (and answers) before the binding moves, and only
versions older than the newest `keep` are unloaded afterwards, so requests that resolved the previous version
just before the swap still find it served.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from rolegraph.errors import EndpointError, TrainingError
from rolegraph.trainers.registry import AdapterRegistry, AdapterVersion, parse_lora_name


class AdapterClient(Protocol):
    """What hand-off needs of rolegraph.serving.Client."""

    async def load_adapter(self, name: str, path: str, *, replace: bool = False) -> Any: ...

    async def unload_adapter(self, name: str) -> Any: ...

    async def list_models(self) -> Any: ...


class SwappablePool(Protocol):
    """What hand-off needs of rolegraph.serving.EndpointPool."""

    @property
    def bindings(self) -> Mapping[str, Any]: ...

    def resolve(self, role: str) -> tuple[Any, str, Any]: ...

    async def swap(self, role: str, endpoint: str, model: str) -> Any: ...


@dataclass
class HandOffReport:
    """What one hand-off did and how long the adapter took from saved to serving."""

    role: str
    adapter: AdapterVersion
    endpoints: list[str]
    load_s: float
    """Seconds from the start of hand-off until the adapter answered on every endpoint and the binding
    moved."""
    unloaded: list[str] = field(default_factory=list)


def model_names(listing: Any) -> list[str]:
    """Model ids from whatever `list_models()` returned (ids, dicts with `id`, or objects with `.id`)."""
    names: list[str] = []
    for item in listing or []:
        if isinstance(item, str):
            names.append(item)
        elif isinstance(item, dict) and "id" in item:
            names.append(str(item["id"]))
        elif hasattr(item, "id"):
            names.append(str(item.id))
    return names


def role_endpoint(pool: SwappablePool, role: str) -> str:
    """The endpoint a role is bound to right now (the pool's live binding, which follows earlier swaps)."""
    binding = pool.bindings.get(role)
    if binding is None:
        raise TrainingError(
            f"role '{role}' has no binding in the config", "bind it under `roles:` in the config"
        )
    return str(binding.endpoint)


def models_in_use(pool: SwappablePool) -> set[str]:
    """Models some role is bound to right now (never unloaded)."""
    return {str(binding.model) for binding in pool.bindings.values() if binding.model}


async def hand_off(
    pool: SwappablePool,
    role: str,
    adapter: AdapterVersion,
    *,
    keep: int = 2,
) -> HandOffReport:
    """Load `adapter` where `role` is served, switch the role to it, and unload versions beyond `keep`."""
    if keep < 2:
        raise TrainingError(
            f"keep={keep} would unload the version in-flight requests still use", "keep at least 2 versions"
        )
    started = time.perf_counter()
    client, _, _ = pool.resolve(role)
    endpoint = role_endpoint(pool, role)
    name = adapter.lora_name
    # A name already served (e.g. by a server that outlived an earlier adapters dir) is reloaded in place.
    replace = name in model_names(await client.list_models())
    try:
        await client.load_adapter(name, str(adapter.path), replace=replace)
    except EndpointError as exc:
        raise EndpointError(
            f"endpoint '{endpoint}' could not load adapter {name}: {exc.message}",
            exc.hint or "start vLLM with --enable-lora and VLLM_ALLOW_RUNTIME_LORA_UPDATING=True",
        ) from None
    await pool.swap(role, endpoint, name)
    load_s = time.perf_counter() - started
    unloaded = await unload_old(client, pool, role, keep=keep)
    return HandOffReport(role=role, adapter=adapter, endpoints=[endpoint], load_s=load_s, unloaded=unloaded)


async def unload_old(client: Any, pool: SwappablePool, role: str, *, keep: int) -> list[str]:
    """Unload this role's adapter versions older than the newest `keep` that no role is bound to."""
    loaded = model_names(await client.list_models())
    versions = sorted(
        (parsed[1], name) for name in loaded if (parsed := parse_lora_name(name)) and parsed[0] == role
    )
    in_use = models_in_use(pool)
    doomed = [name for _, name in versions[: max(len(versions) - keep, 0)] if name not in in_use]
    for name in doomed:
        await client.unload_adapter(name)
    return doomed


async def publish_and_hand_off(
    pool: SwappablePool,
    role: str,
    trained_dir: Path,
    *,
    registry: AdapterRegistry | None = None,
    keep: int = 2,
) -> HandOffReport:
    """Publish a trained adapter dir as the role's next version and hand it off."""
    registry = registry or AdapterRegistry()
    adapter = registry.publish(role, trained_dir)
    return await hand_off(pool, role, adapter, keep=keep)
