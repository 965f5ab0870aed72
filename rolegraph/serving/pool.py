"""All endpoints a config's roles use, one Client each, and the live role → (endpoint, model) bindings.

An endpoint may have several replicas (a list of `base_url`s, or `launch.replicas`): its one Client routes
among them (see rolegraph.serving.replicas) and loads adapters into all of them.

An attached endpoint is probed on first use (see rolegraph.serving.capabilities; what the config declares is
not probed) and the result cached for the pool's life, i.e. the run. A model such an endpoint does not list
is used with a one-line warning once a 1-token request shows the server accepts the name.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import threading
from types import MappingProxyType
from typing import Any, cast

from rich.console import Console

from rolegraph.config import LaunchSpec, RoleBinding, RolegraphConfig, SamplingParams
from rolegraph.errors import ConfigError, ModelNotFoundError, RequestRejectedError
from rolegraph.serving.capabilities import CHAT_PROBED, Capabilities, probe
from rolegraph.serving.client import AdapterPaths, Client
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
        self.replica_servers: dict[str, list[ServerHandle]] = {}
        """Endpoint → every replica's server, for launched endpoints."""
        self._adapter_paths: dict[str, AdapterPaths] = {}
        """Endpoint → how its replicas get their own copy of an adapter (replicas Ray placed)."""
        self.base_models: dict[str, str] = {}
        """Endpoint → its base model (the listed one, or for an endpoint listing none the model its roles
        are bound to)."""
        # Replaced wholesale on swap, never mutated: a reader always sees one consistent mapping.
        self._bindings: MappingProxyType[str, RoleBinding] = MappingProxyType({})
        self._swap_lock = asyncio.Lock()
        self._accepted: set[tuple[str, str]] = set()
        """(endpoint, model) pairs an endpoint that does not list them has answered."""
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
                model = binding.model or self.base_models.get(binding.endpoint)
                if model is None:
                    raise ConfigError(
                        f"role '{role}': endpoint '{binding.endpoint}' names no base model "
                        "(its /v1/models lists none or fails)",
                        f"set `roles.{role}.model` to the name the server at "
                        f"{self.clients[binding.endpoint].base_url} serves",
                    )
                self.base_models.setdefault(binding.endpoint, model)
                await self._check_served(binding.endpoint, model, role=role)
                bindings[role] = binding.model_copy(update={"model": model})
            self._bindings = MappingProxyType(bindings)
        except BaseException:
            await self.close()
            raise

    @property
    def servers(self) -> dict[str, ServerHandle]:
        """Endpoint → the server launched (or reused) for it; its first replica's when it has several."""
        return {name: handles[0] for name, handles in self.replica_servers.items()}

    async def _open_endpoint(self, name: str) -> None:
        endpoint = self.config.endpoints[name]
        urls = endpoint.replica_urls
        if endpoint.launch is not None:
            handles = await self._launch(name, endpoint.launch)
            self.replica_servers[name] = handles
            urls = [handle.base_url for handle in handles]
        assert urls  # the config guarantees base_url or launch
        declared = Capabilities.declared(endpoint.capabilities)
        if endpoint.launch is not None:
            declared = declared.over(Capabilities.vllm(runtime_lora=endpoint.launch.enable_lora))
        client = Client(
            name,
            urls,
            api_key=endpoint.api_key,
            max_concurrency=endpoint.max_concurrency,
            timeout_s=endpoint.timeout_s,
            max_retries=endpoint.max_retries,
            launched=endpoint.launch is not None,
            capabilities=declared,
            adapter_paths=self._adapter_paths.get(name),
        )
        self.clients[name] = client
        if name in self.replica_servers:
            self.base_models[name] = self.replica_servers[name][0].model
            return
        with contextlib.suppress(ConfigError):  # roles bound to it must then name their model (see start)
            self.base_models[name] = await client.base_model()

    async def _launch(self, name: str, spec: LaunchSpec) -> list[ServerHandle]:
        """Start (or reuse) every replica of a launched endpoint, concurrently; all or none. With a Ray
        cluster active (`--ray`), Ray places the replicas (see rolegraph.cluster.servers)."""
        from rolegraph.cluster.settings import active

        cluster = active()
        if cluster is not None:
            from rolegraph.cluster.servers import AdapterShipper, launch_on_ray

            placed = await launch_on_ray(name, spec, cluster.address)
            self._adapter_paths[name] = AdapterShipper(placed)
            return cast(list[ServerHandle], placed)
        # Launching blocks for tens of seconds (health polling); keep the event loop responsive meanwhile.
        cancel = threading.Event()
        starts = [
            asyncio.to_thread(
                launch_server, name, spec, console=self._console, cancel=cancel, replica=replica
            )
            for replica in range(spec.replicas)
        ]
        try:
            results = await asyncio.gather(*starts, return_exceptions=True)
        except asyncio.CancelledError:
            cancel.set()  # the threads notice, stop their half-started servers and exit
            raise
        handles = [result for result in results if isinstance(result, ServerHandle)]
        failures = [result for result in results if isinstance(result, BaseException)]
        if failures:
            for handle in handles:
                if handle.owned and not self.keep_servers:
                    await asyncio.to_thread(handle.stop)
            raise failures[0]
        return handles

    async def _check_served(self, endpoint: str, model: str, *, role: str | None = None) -> None:
        """The endpoint serves `model`: it lists it, or (attached) accepts it in a 1-token request."""
        client = self.clients[endpoint]
        served = await client.listed_models()
        listed = served is not None and model in served
        who = f"role '{role}': " if role else ""
        unknown = set(client.capabilities.unknown)
        chatted = bool(unknown & CHAT_PROBED)  # the probe sends a chat request with this model
        if unknown:
            try:
                client.capabilities = await probe(client, model, skip=client.capabilities)
            except RequestRejectedError as exc:
                raise _rejected(who, endpoint, model, exc) from None
        if listed or (endpoint, model) in self._accepted:
            return
        if client.launched or client.capabilities.lists_models:
            raise ModelNotFoundError(
                f"{who}endpoint '{endpoint}' does not serve model '{model}' "
                f"(it serves: {', '.join(served or []) or 'nothing'})",
                "bind the role to a served model, or load the adapter first",
            )
        try:
            if not chatted:
                await client.chat(
                    [{"role": "user", "content": "hi"}],
                    model=model,
                    sampling=SamplingParams(temperature=0.0, max_tokens=1),
                )
        except RequestRejectedError as exc:
            raise _rejected(who, endpoint, model, exc) from None
        self._accepted.add((endpoint, model))
        why = "lists no models" if not served else f"lists only {', '.join(served)}"
        self._console.print(
            f"[yellow]warning[/] endpoint '{endpoint}' {why}; using the configured model '{model}'",
            soft_wrap=True,
        )

    @property
    def capabilities(self) -> dict[str, Capabilities]:
        """Each open endpoint's capabilities, as probed or declared (record them with the run)."""
        return {name: client.capabilities for name, client in self.clients.items()}

    def capability_record(self) -> dict[str, dict[str, Any]]:
        """The capabilities as JSON-able data: endpoint → {capability: true/false/null, "rejected_fields"}."""
        return {
            name: {
                **dataclasses.asdict(client.capabilities),
                "rejected_fields": sorted(client.rejected_fields),
            }
            for name, client in self.clients.items()
        }

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
        replica_servers, self.replica_servers = self.replica_servers, {}
        if self.keep_servers:
            return
        for handles in replica_servers.values():
            for handle in handles:
                if handle.owned:
                    await asyncio.to_thread(handle.stop)


def _rejected(who: str, endpoint: str, model: str, exc: RequestRejectedError) -> ModelNotFoundError:
    """The server's own words when it refuses a model name it does not list."""
    return ModelNotFoundError(
        f"{who}endpoint '{endpoint}' does not list model '{model}', and rejected it: {exc.message}",
        "bind the role to the model name the server serves",
    )
