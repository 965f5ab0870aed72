"""Hand-off: hot-load a published adapter into the endpoint serving a role, then swap the role's binding.

Order matters for "no request fails": the adapter is loaded (and answers) before the binding moves, and only
versions older than the newest `keep` are unloaded afterwards, once the server reports no running or waiting
request on them, so requests that resolved an old version before a swap still find it served.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from rolegraph.errors import EndpointError, TrainingError
from rolegraph.trainers.registry import AdapterRegistry, AdapterVersion, parse_lora_name

UNLOAD_MAX_WAIT_S = 60.0
IDLE_POLLS = 3
IDLE_POLL_S = 0.5
UNKNOWN_USAGE_GRACE_S = 5.0
"""Unloading an old version waits (at most UNLOAD_MAX_WAIT_S) for IDLE_POLLS quiet polls of the server."""


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
    unloaded = await unload_old(client, pool, role, keep=keep, current=adapter.version)
    return HandOffReport(role=role, adapter=adapter, endpoints=[endpoint], load_s=load_s, unloaded=unloaded)


async def unload_old(
    client: Any,
    pool: SwappablePool,
    role: str,
    *,
    keep: int,
    current: int,
    max_wait_s: float = UNLOAD_MAX_WAIT_S,
) -> list[str]:
    """Unload this role's versions older than the newest `keep` up to `current` that no role is bound to, once
    no request uses them any more; a version still busy after `max_wait_s` stays loaded (the next hand-off
    retries), because a request that resolved it before an earlier swap may still be running. Versions above
    `current` were not published by this registry (e.g. left by another adapters dir) and are left alone."""
    loaded = model_names(await client.list_models())
    versions = sorted(
        (parsed[1], name)
        for name in loaded
        if (parsed := parse_lora_name(name)) and parsed[0] == role and parsed[1] <= current
    )
    in_use = models_in_use(pool)
    doomed = [name for _, name in versions[: max(len(versions) - keep, 0)] if name not in in_use]
    if not doomed:
        return []
    idle = await wait_until_idle(client, doomed, max_wait_s=max_wait_s)
    for name in idle:
        await client.unload_adapter(name)
    return idle


async def busy_adapters(client: Any) -> set[str] | None:
    """Adapters with running or waiting requests, from vLLM's `vllm:lora_requests_info` gauge (its newest
    sample); None when the endpoint does not say (not vLLM, or metrics unreachable)."""
    import httpx

    try:
        async with httpx.AsyncClient(timeout=10.0) as http:
            response = await http.get(f"{client.server_url}/metrics")
            response.raise_for_status()
    except (httpx.HTTPError, AttributeError):
        return None
    newest: tuple[float, set[str]] | None = None
    for line in response.text.splitlines():
        if not line.startswith("vllm:lora_requests_info{"):
            continue
        labels, _, value = line.rpartition(" ")
        names: set[str] = set()
        for key in ("running_lora_adapters", "waiting_lora_adapters"):
            match = re.search(key + r'="([^"]*)"', labels)
            if match:
                names.update(n for n in match.group(1).split(",") if n)
        stamp = float(value)
        if newest is None or stamp >= newest[0]:
            newest = (stamp, names)
    return None if newest is None else newest[1]


async def wait_until_idle(client: Any, names: list[str], *, max_wait_s: float) -> list[str]:
    """The `names` that no request used over IDLE_POLLS consecutive polls (within `max_wait_s`)."""
    deadline = time.monotonic() + max_wait_s
    quiet_polls = 0
    busy: set[str] = set()
    while True:
        reported = await busy_adapters(client)
        if reported is None:
            # No usage figures: give requests that resolved an old version before the swap time to finish.
            await asyncio.sleep(UNKNOWN_USAGE_GRACE_S)
            return list(names)
        busy = reported & set(names)
        quiet_polls = 0 if busy else quiet_polls + 1
        # Several quiet polls in a row: a request still in transit to the engine would have shown up.
        if quiet_polls >= IDLE_POLLS or time.monotonic() >= deadline:
            return [name for name in names if name not in busy]
        await asyncio.sleep(IDLE_POLL_S)


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
