"""Hand-off: hot-load a published adapter into every endpoint serving a role's base model, then swap the role.

Where: an adapter fits only the base model it was trained on, so it goes to every endpoint of the pool whose
base model has the same name as the base model of the endpoint the role is bound to (the role's endpoint
first). Endpoints serving another base model are left alone.

An endpoint served by several replicas loads the adapter into every live replica (the client does it, all or
none; see rolegraph.serving.client), so "loaded on an endpoint" means loaded on each of its replicas; a
replica that is down meanwhile loads it before it is brought back.

Order matters for "no request fails": the adapter is loaded on all of those endpoints (and answers) before the
binding moves; if any endpoint cannot load it, the binding stays and the endpoints that did load it unload it
again. Only the role's versions (in the adapter's own adapters dir) beyond the newest `keep` are unloaded
afterwards, once the server reports no running or waiting request on them, so requests that resolved an old
version before a swap still find it served; names another adapters dir gave (another run sharing the server)
are left alone. Finally versions beyond `keep` that no endpoint has loaded and no role is bound to are deleted
from disk.

An endpoint without runtime LoRA (its capabilities say so, see rolegraph.serving.capabilities) is skipped with
a one-line warning naming it and where the adapter was saved; when it is the role's own endpoint nothing is
loaded and the binding stays. Training has finished by then, and the adapter stays published.

A version is never loaded in place: its name is unique per publish (see rolegraph.trainers.registry), and an
endpoint that already lists the name (a retried hand-off) already serves exactly these weights.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from prometheus_client.parser import text_string_to_metric_families
from rich.console import Console

from rolegraph.errors import EndpointError, TrainingError
from rolegraph.trainers.registry import AdapterRegistry, AdapterVersion

UNLOAD_MAX_WAIT_S = 60.0
IDLE_POLLS = 3
IDLE_POLL_S = 0.5
UNKNOWN_USAGE_GRACE_S = 5.0
"""Unloading an old version waits (at most UNLOAD_MAX_WAIT_S) for IDLE_POLLS quiet polls of the server."""
LORA_INFO = "vllm:lora_requests_info"
"""vLLM's gauge of the adapters with running or waiting requests (its value is the sample's timestamp)."""


class AdapterClient(Protocol):
    """What hand-off needs of rolegraph.serving.Client."""

    async def load_adapter(self, name: str, path: str) -> Any: ...

    async def unload_adapter(self, name: str) -> Any: ...

    async def list_models(self) -> list[str]: ...

    async def metrics(self) -> str: ...


class SwappablePool(Protocol):
    """What hand-off needs of rolegraph.serving.EndpointPool."""

    @property
    def bindings(self) -> Mapping[str, Any]: ...

    @property
    def clients(self) -> Mapping[str, Any]: ...

    @property
    def base_models(self) -> Mapping[str, str]: ...

    async def swap(self, role: str, endpoint: str, model: str) -> Any: ...


@dataclass
class HandOffReport:
    """What one hand-off did and how long the adapter took from saved to serving."""

    role: str
    adapter: AdapterVersion
    endpoints: list[str]
    """Every endpoint the adapter was loaded into, the role's own first."""
    load_s: float
    """Seconds from the start of hand-off until the adapter answered on every endpoint and the binding
    moved."""
    unloaded: dict[str, list[str]] = field(default_factory=dict)
    """Older versions unloaded, by endpoint."""
    pruned: list[str] = field(default_factory=list)
    """Older versions deleted from disk."""
    not_loaded: dict[str, str] = field(default_factory=dict)
    """Endpoints serving the base model that could not load the adapter, each with the one-line reason."""

    @property
    def swapped(self) -> bool:
        """The role now calls the new adapter (False when its own endpoint cannot load adapters)."""
        return bool(self.endpoints)


def lacks_runtime_lora(client: Any) -> bool:
    """The endpoint is known to have no runtime LoRA (a client without capabilities is assumed to have it)."""
    capabilities = getattr(client, "capabilities", None)
    return capabilities is not None and capabilities.runtime_lora is False


def role_endpoint(pool: SwappablePool, role: str) -> str:
    """The endpoint a role is bound to right now (the pool's live binding, which follows earlier swaps)."""
    binding = pool.bindings.get(role)
    if binding is None:
        raise TrainingError(
            f"role '{role}' has no binding in the config", "bind it under `roles:` in the config"
        )
    return str(binding.endpoint)


def adapter_endpoints(pool: SwappablePool, role: str) -> list[str]:
    """Where a role's adapters go: the role's own endpoint, then every other one with the same base model."""
    own = role_endpoint(pool, role)
    base = pool.base_models[own]
    return [own, *(name for name, model in pool.base_models.items() if model == base and name != own)]


def models_in_use(pool: SwappablePool) -> set[str]:
    """Models some role is bound to right now (never unloaded)."""
    return {str(binding.model) for binding in pool.bindings.values() if binding.model}


async def hand_off(
    pool: SwappablePool, role: str, adapter: AdapterVersion, *, keep: int = 2
) -> HandOffReport:
    """Load `adapter` into every endpoint serving the role's base model, switch the role to it, then unload
    and delete from disk the role's versions beyond `keep` (see the module docstring)."""
    if keep < 2:
        raise TrainingError(
            f"keep={keep} would unload the version in-flight requests still use", "keep at least 2 versions"
        )
    started = time.perf_counter()
    candidates = adapter_endpoints(pool, role)
    not_loaded = {
        ep: f"endpoint '{ep}' cannot load LoRA adapters at run time; {adapter.lora_name} is saved at "
        f"{adapter.path}"
        for ep in candidates
        if lacks_runtime_lora(pool.clients[ep])
    }
    for reason in not_loaded.values():
        Console(stderr=True).print(f"[yellow]warning[/] {reason}", soft_wrap=True)
    if candidates[0] in not_loaded:
        return HandOffReport(role, adapter, [], time.perf_counter() - started, not_loaded=not_loaded)
    endpoints = [ep for ep in candidates if ep not in not_loaded]
    await load_everywhere(pool, endpoints, adapter)
    await pool.swap(role, endpoints[0], adapter.lora_name)
    load_s = time.perf_counter() - started
    registry = AdapterRegistry(adapter.path.parent.parent)
    ours = [version.lora_name for version in registry.versions(role)]
    unloaded = await asyncio.gather(
        *(unload_old(pool.clients[ep], pool, ours, keep=keep) for ep in endpoints)
    )
    pruned = await prune_unloaded(pool, registry, role, keep=keep)
    return HandOffReport(
        role=role,
        adapter=adapter,
        endpoints=endpoints,
        load_s=load_s,
        unloaded={ep: names for ep, names in zip(endpoints, unloaded, strict=True) if names},
        pruned=pruned,
        not_loaded=not_loaded,
    )


async def load_everywhere(pool: SwappablePool, endpoints: list[str], adapter: AdapterVersion) -> None:
    """Load `adapter` into each endpoint that does not list it yet; all or nothing."""
    name = adapter.lora_name
    listed = await asyncio.gather(*(pool.clients[ep].list_models() for ep in endpoints))
    missing = [ep for ep, names in zip(endpoints, listed, strict=True) if name not in names]
    results = await asyncio.gather(
        *(pool.clients[ep].load_adapter(name, str(adapter.path)) for ep in missing), return_exceptions=True
    )
    failures = [exc for exc in results if isinstance(exc, BaseException)]
    if not failures:
        return
    for ep, result in zip(missing, results, strict=True):
        if not isinstance(result, BaseException):
            with contextlib.suppress(EndpointError):  # best effort: the load failure is what gets reported
                await pool.clients[ep].unload_adapter(name)
    raise failures[0]


async def unload_old(
    client: AdapterClient,
    pool: SwappablePool,
    versions: list[str],
    *,
    keep: int,
    max_wait_s: float | None = None,
) -> list[str]:
    """Unload the `versions` (a role's, oldest first) that `client` has loaded beyond the newest `keep` and no
    role is bound to, once no request uses them any more; returns them. A version still busy after
    `max_wait_s` (default UNLOAD_MAX_WAIT_S) stays loaded (the next hand-off retries), because a request that
    resolved it before an earlier swap may still be running. Loaded names not in `versions` (another adapters
    dir's, e.g. another run sharing the server) are left alone."""
    served = set(await client.list_models())
    loaded = [name for name in versions if name in served]
    in_use = models_in_use(pool)
    doomed = [name for name in loaded[: max(len(loaded) - keep, 0)] if name not in in_use]
    if not doomed:
        return []
    wait_s = UNLOAD_MAX_WAIT_S if max_wait_s is None else max_wait_s
    idle = await wait_until_idle(client, doomed, max_wait_s=wait_s)
    for name in idle:
        await client.unload_adapter(name)
    return idle


async def prune_unloaded(
    pool: SwappablePool, registry: AdapterRegistry, role: str, *, keep: int
) -> list[str]:
    """Delete from `registry` the role's versions beyond `keep` that no endpoint of the pool has loaded and no
    role is bound to; returns their names."""
    clients = [client for client in pool.clients.values() if not lacks_runtime_lora(client)]
    listed = await asyncio.gather(*(client.list_models() for client in clients))
    protect = models_in_use(pool).union(*listed)
    return [version.lora_name for version in registry.prune(role, keep, protect=protect)]


async def busy_adapters(client: AdapterClient) -> set[str] | None:
    """Adapters with running or waiting requests on any replica of the endpoint, from vLLM's
    `vllm:lora_requests_info` gauge; None when the endpoint does not say (not vLLM, metrics unreachable)."""
    each_replica = getattr(client, "replica_metrics", None)
    try:
        texts = [await client.metrics()] if each_replica is None else list(await each_replica())
    except EndpointError:
        return None
    reported = [busy for busy in map(_busy_in, texts) if busy is not None]
    return set().union(*reported) if reported else None


def _busy_in(metrics: str) -> set[str] | None:
    """The adapters one server's metrics report busy (the gauge's newest sample); None when not said."""
    try:
        families = list(text_string_to_metric_families(metrics))
    except ValueError:  # not Prometheus text
        return None
    newest: tuple[float, set[str]] | None = None
    for sample in (s for family in families if family.name == LORA_INFO for s in family.samples):
        names = {
            name
            for key in ("running_lora_adapters", "waiting_lora_adapters")
            for name in sample.labels.get(key, "").split(",")
            if name
        }
        if newest is None or sample.value >= newest[0]:
            newest = (sample.value, names)
    return None if newest is None else newest[1]


async def wait_until_idle(client: AdapterClient, names: list[str], *, max_wait_s: float) -> list[str]:
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
