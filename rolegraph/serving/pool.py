"""All endpoints a config's roles use, one Client each, and the live role → (endpoint, model) bindings."""

from __future__ import annotations

import asyncio
import threading
from types import MappingProxyType
from typing import Any

from rich.console import Console

from rolegraph.config import RoleBinding, RolegraphConfig, SamplingParams
from rolegraph.errors import ConfigError, ModelNotFoundError
from rolegraph.serving.client import Client
from rolegraph.serving.launcher import ServerHandle, launch_server


class EndpointPool:
    """Launches or attaches every endpoint a role uses; resolves roles to (client, model, sampling).

    Use as `async with EndpointPool(config) as pool:`. Servers the pool started are stopped on close, unless
    they were reused from an earlier command or `keep_servers=True`.
    """

    def __init__(
        self,
        config: RolegraphConfig,
        *,
        keep_servers: bool = False,
        console: Console | None = None,
    ) -> None:
        self.config = config
        self.keep_servers = keep_servers
        self._console = console or Console(stderr=True)
        self.clients: dict[str, Client] = {}
        self.servers: dict[str, ServerHandle] = {}
        self.base_models: dict[str, str] = {}
        # Replaced wholesale on swap, never mutated: a reader always sees one consistent mapping.
        self._bindings: MappingProxyType[str, RoleBinding] = MappingProxyType({})
        self._swap_lock = asyncio.Lock()
        self._started = False

    async def __aenter__(self) -> EndpointPool:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @property
    def bindings(self) -> MappingProxyType[str, RoleBinding]:
        """The live bindings, with each `model` filled in (the endpoint's base model when unset)."""
        return self._bindings

    @property
    def roles(self) -> list[str]:
        return sorted(self._bindings)

    async def start(self) -> None:
        """Launch or attach the endpoints the roles use and check each serves its roles' models."""
        if self._started:
            return
        self._started = True
        try:
            used = list(dict.fromkeys(binding.endpoint for binding in self.config.roles.values()))
            for name in used:
                await self._open_endpoint(name)
            bindings: dict[str, RoleBinding] = {}
            for role, binding in self.config.roles.items():
                model = binding.model or self.base_models[binding.endpoint]
                await self._check_served(binding.endpoint, model, role=role)
                bindings[role] = binding.model_copy(update={"model": model})
            self._bindings = MappingProxyType(bindings)
        except BaseException:
            await self.close()
            raise

    async def _open_endpoint(self, name: str) -> None:
        endpoint = self.config.endpoints[name]
        base_url = endpoint.base_url
        if endpoint.launch is not None:
            # Launching blocks for tens of seconds (health polling); keep the event loop responsive meanwhile.
            cancel = threading.Event()
            try:
                handle = await asyncio.to_thread(
                    launch_server, name, endpoint.launch, console=self._console, cancel=cancel
                )
            except asyncio.CancelledError:
                cancel.set()  # the thread notices, stops the half-started server and exits
                raise
            self.servers[name] = handle
            base_url = handle.base_url
        assert base_url is not None  # the config guarantees base_url or launch
        client = Client(
            name,
            base_url,
            api_key=endpoint.api_key,
            max_concurrency=endpoint.max_concurrency,
            timeout_s=endpoint.timeout_s,
            max_retries=endpoint.max_retries,
        )
        self.clients[name] = client
        self.base_models[name] = (
            self.servers[name].model if name in self.servers else await client.base_model()
        )

    async def _check_served(self, endpoint: str, model: str, *, role: str | None = None) -> None:
        served = await self.clients[endpoint].list_models()
        if model not in served:
            who = f"role '{role}': " if role else ""
            raise ModelNotFoundError(
                f"{who}endpoint '{endpoint}' does not serve model '{model}' (it serves: {', '.join(served)})",
                "bind the role to a served model, or load the adapter first",
            )

    def resolve(self, role: str) -> tuple[Client, str, SamplingParams]:
        """The client, model name and sampling defaults a role calls with right now."""
        binding = self._bindings.get(role)
        if binding is None:
            known = ", ".join(self.roles) or "none"
            raise ConfigError(f"unknown role '{role}'", f"use one of the configured roles: {known}")
        assert binding.model is not None  # filled in by start()
        return self.clients[binding.endpoint], binding.model, binding.sampling

    def client(self, endpoint: str) -> Client:
        """The client of a started endpoint."""
        if endpoint not in self.clients:
            known = ", ".join(sorted(self.clients)) or "none"
            raise ConfigError(f"unknown or unused endpoint '{endpoint}'", f"use one of: {known}")
        return self.clients[endpoint]

    async def swap(
        self, role: str, endpoint: str, model: str, *, sampling: SamplingParams | None = None
    ) -> None:
        """Rebind `role` to `model` on `endpoint`; resolved requests keep their model, new ones switch."""
        async with self._swap_lock:
            current = self._bindings.get(role)
            if current is None:
                known = ", ".join(self.roles) or "none"
                raise ConfigError(
                    f"cannot swap unknown role '{role}'", f"use one of the configured roles: {known}"
                )
            if endpoint not in self.clients:
                await self._open_new_endpoint(endpoint)
            await self._check_served(endpoint, model, role=role)
            update: dict[str, Any] = {"endpoint": endpoint, "model": model}
            if sampling is not None:
                update["sampling"] = sampling
            bindings = dict(self._bindings)
            bindings[role] = current.model_copy(update=update)
            self._bindings = MappingProxyType(bindings)

    async def _open_new_endpoint(self, endpoint: str) -> None:
        if endpoint not in self.config.endpoints:
            known = ", ".join(sorted(self.config.endpoints)) or "none"
            raise ConfigError(
                f"unknown endpoint '{endpoint}'", f"use one of the configured endpoints: {known}"
            )
        await self._open_endpoint(endpoint)

    async def close(self) -> None:
        """Close every client and stop the servers this pool started (unless keep_servers)."""
        clients, self.clients = self.clients, {}
        for client in clients.values():
            await client.aclose()
        servers, self.servers = self.servers, {}
        if self.keep_servers:
            return
        for handle in servers.values():
            if handle.owned:
                await asyncio.to_thread(handle.stop)
