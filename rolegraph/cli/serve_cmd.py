"""`rolegraph serve` (start the configured servers, stay in the foreground) and `rolegraph endpoints ...`."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from pathlib import Path
from typing import Any

import typer
from prometheus_client.parser import text_string_to_metric_families
from rich.console import Console
from rich.table import Table

from rolegraph.config import EndpointConfig, RolegraphConfig, load_config
from rolegraph.errors import RequestRejectedError, RolegraphError
from rolegraph.models.registry import resolve_model
from rolegraph.serving.capabilities import Capabilities, probe
from rolegraph.serving.client import Client, ServerFailedError
from rolegraph.serving.launcher import (
    find_server,
    forget_server,
    running_servers,
    spec_hash,
    stop_process_group,
)
from rolegraph.serving.pool import EndpointPool

endpoints_app = typer.Typer(help="Inspect and stop the configured endpoints.", no_args_is_help=True)

CONFIG_OPTION = typer.Option(
    None, "--config", "-c", help="YAML config (default: the built-in model, launched)."
)


def serve(config: Path | None = CONFIG_OPTION) -> None:
    """Start (or reuse) every configured server and keep them up until Ctrl-C."""
    loaded = load_config(config)
    try:
        asyncio.run(_serve(loaded))
    except (KeyboardInterrupt, asyncio.CancelledError):
        Console(stderr=True).print("stopped")


async def _serve(config: RolegraphConfig) -> None:
    console = Console(stderr=True)
    task = asyncio.current_task()
    loop = asyncio.get_running_loop()
    if task is not None:
        # SIGTERM shuts down as cleanly as Ctrl-C: cancelling the task runs the pool's close().
        loop.add_signal_handler(signal.SIGTERM, task.cancel)
    async with EndpointPool(config, console=console) as pool:
        Console().print(await _status_table(config, pool.clients))
        console.print("serving; press Ctrl-C to stop the servers started here")
        await asyncio.Event().wait()


@endpoints_app.command("status")
def status(config: Path | None = CONFIG_OPTION) -> None:
    """Show each endpoint (each replica of it), whether it is up, the requests it is working on, its base
    models, loaded adapters and capabilities."""
    Console().print(asyncio.run(_status_table(load_config(config), {})))


@endpoints_app.command("stop")
def stop(
    name: str | None = typer.Argument(None, help="Endpoint name; all launched servers when omitted."),
) -> None:
    """Stop servers launched by earlier rolegraph commands (those recorded in $ROLEGRAPH_HOME/servers)."""
    console = Console(stderr=True)
    states = [s for s in running_servers() if name is None or s.endpoint == name]
    if not states:
        console.print("no running rolegraph-launched server" + (f" for endpoint '{name}'" if name else ""))
        return
    for state in states:
        stop_process_group(state.pid)
        forget_server(state)
        console.print(f"[green]stopped[/] '{state.endpoint}' (pid {state.pid}, port {state.port})")


async def _status_table(config: RolegraphConfig, clients: dict[str, Client]) -> Table:
    table = Table(title="endpoints")
    columns = ("endpoint", "kind", "url", "status", "outstanding", "base models", "adapters", "capabilities")
    for column in columns:
        table.add_column(column)
    for name, endpoint in config.endpoints.items():
        kind = "launched" if endpoint.launch is not None else "attached"
        urls = _urls_of(name, endpoint)
        own = clients.get(name)
        for replica, url in enumerate(urls):
            label = name if len(urls) == 1 else f"{name} #{replica}"
            if url is None:
                model = endpoint.launch.model if endpoint.launch else "-"
                table.add_row(label, kind, "-", "[yellow]not running[/]", "-", model, "-", "-")
                continue
            models = [b.model for b in config.roles.values() if b.endpoint == name and b.model]
            # A client of several replicas routes its requests: each row asks its own replica.
            client = own if own is not None and len(own.replicas) == 1 else None
            row = await _probe(name, url, endpoint, client, models)
            table.add_row(label, kind, url, *row)
    return table


def _urls_of(name: str, endpoint: EndpointConfig) -> list[str | None]:
    """An attached endpoint's replica URLs, or the URL of each live server launched for this endpoint and
    spec (None for a replica not running)."""
    if endpoint.launch is None:
        return list(endpoint.replica_urls)
    try:
        model_arg, _ = resolve_model(endpoint.launch.model, prepare=False)
    except RolegraphError:
        return [None] * endpoint.launch.replicas
    digest = spec_hash(endpoint.launch, model_arg)
    states = [find_server(name, digest, replica) for replica in range(endpoint.launch.replicas)]
    return [state.base_url if state is not None else None for state in states]


REQUESTS_IN_PROGRESS = ("vllm:num_requests_running", "vllm:num_requests_waiting")


async def _outstanding(client: Client) -> str:
    """The requests the server is running or has queued (vLLM's metrics), or "-" when it does not say."""
    try:
        families = list(text_string_to_metric_families(await client.metrics()))
    except (RolegraphError, ValueError):
        return "-"
    samples = [s.value for f in families if f.name in REQUESTS_IN_PROGRESS for s in f.samples]
    return str(int(sum(samples))) if samples else "-"


async def _probe(
    name: str, url: str, endpoint: EndpointConfig, client: Client | None, models: list[str]
) -> tuple[str, str, str, str, str]:
    """Status, outstanding requests, base models, adapters and capabilities (probed with a role's model, else
    the listed base)."""
    own = client is None
    if client is None:
        declared = Capabilities.declared(endpoint.capabilities)
        if endpoint.launch is not None:
            declared = declared.over(Capabilities.vllm(runtime_lora=endpoint.launch.enable_lora))
        client = Client(
            name,
            url,
            api_key=endpoint.api_key,
            max_retries=2,  # the probe's requests only: a dropped connection is not a missing capability
            timeout_s=30.0,
            launched=endpoint.launch is not None,
            capabilities=declared,
        )
    try:
        cards: list[dict[str, Any]] = await client.model_cards(retry=False)
    except (RequestRejectedError, ServerFailedError, ValueError):
        cards = []  # it answers, but lists nothing
    except RolegraphError:
        if own:
            await client.aclose()
        return "[red]down[/]", "-", "-", "-", "-"
    try:
        bases = [str(c["id"]) for c in cards if not c.get("parent")]
        adapters = [f"{c['id']} ({c.get('root', '?')})" for c in cards if c.get("parent")]
        model = next(iter(models + bases), None)
        if model is None:
            capabilities = "? (set `model:` on a role bound to it to probe)"
        else:
            try:
                capabilities = (await probe(client, model, skip=client.capabilities)).summary()
            except RolegraphError as exc:
                capabilities = f"[red]probe failed[/]: {exc.message}"
        outstanding = await _outstanding(client)
        return "[green]up[/]", outstanding, ", ".join(bases) or "-", "\n".join(adapters) or "-", capabilities
    finally:
        if own:
            with contextlib.suppress(Exception):
                await client.aclose()


def register(app: typer.Typer) -> None:
    """Add this module's commands to the root app."""
    app.command("serve")(serve)
    app.add_typer(endpoints_app, name="endpoints")
