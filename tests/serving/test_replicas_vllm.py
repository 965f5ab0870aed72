"""Endpoint replicas against the session's real vLLM server: two replica addresses are two loopback TCP
forwarders in front of it, each killable. A replica killed mid-run loses no episode and records nothing twice;
a hand-off loads a real adapter through both replicas before the role's binding moves."""

from __future__ import annotations

import asyncio
import contextlib
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from rolegraph.config import EndpointConfig, RoleBinding, RolegraphConfig, SamplingParams
from rolegraph.graphs.base import RunParams
from rolegraph.graphs.registry import get_graph
from rolegraph.graphs.runtime import run_graph
from rolegraph.serving import Client, EndpointPool
from rolegraph.store import Store
from rolegraph.trainers.handoff import hand_off
from rolegraph.trainers.registry import AdapterRegistry
from tests.fixtures.serving import VLLMServer
from tests.trainers.conftest import MARK, adapter_registry, distinct_adapter  # noqa: F401 (fixtures)

pytestmark = pytest.mark.vllm

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "critique" / "graph.yaml"
REQUEST_LINE = re.compile(rb"(GET|POST) (/\S*) HTTP/1\.1")
VALID_PATHS = {
    ("solve", "critique", "check"),
    ("solve", "critique", "solve", "critique", "check"),
}
"""The node sequences an episode of examples/critique can record (solve runs at most twice)."""


class Forwarder:
    """One replica address: a TCP forwarder on loopback to the real server. `kill()` closes it and drops
    every connection through it, requests in flight included, as a dying replica does."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.requests: list[str] = []
        """`METHOD /path` of every request it forwarded."""
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    @property
    def chats(self) -> list[str]:
        """The chat requests it forwarded."""
        return [request for request in self.requests if request.endswith("/chat/completions")]

    async def start(self) -> str:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        port = self._server.sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}/v1"

    async def kill(self) -> None:
        assert self._server is not None
        if not self._server.is_serving():
            return
        self._server.close()
        for writer in list(self._writers):
            writer.transport.abort()
        await self._server.wait_closed()

    async def _handle(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        server_reader, server_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        self._writers |= {client_writer, server_writer}
        try:
            await asyncio.gather(
                self._pipe(client_reader, server_writer, record=True),
                self._pipe(server_reader, client_writer),
            )
        except asyncio.CancelledError:  # the test's loop is closing; asyncio would log it as an error
            pass
        finally:
            self._writers -= {client_writer, server_writer}

    async def _pipe(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, record: bool = False
    ) -> None:
        with contextlib.suppress(ConnectionError):
            while data := await reader.read(65536):
                if record:
                    self.requests += [f"{m[0].decode()} {m[1].decode()}" for m in REQUEST_LINE.findall(data)]
                writer.write(data)
                await writer.drain()
        writer.close()


def _port(base_url: str) -> int:
    return int(base_url.rsplit(":", 1)[1].split("/")[0])


def _config(urls: list[str], model: str) -> RolegraphConfig:
    sampling = SamplingParams(max_tokens=6, temperature=0.0)
    binding = RoleBinding(endpoint="local", model=model, sampling=sampling)
    return RolegraphConfig(
        endpoints={"local": EndpointConfig(base_url=urls, max_retries=2)},
        roles={"solver": binding, "critic": binding},
    )


async def test_a_replica_killed_mid_run_loses_no_episode_and_records_nothing_twice(
    vllm_server: VLLMServer, tmp_path: Path
) -> None:
    replicas = [Forwarder(_port(vllm_server.base_url)) for _ in range(2)]
    urls = [await replica.start() for replica in replicas]
    run_dir = tmp_path / "run"
    killed: list[int] = []
    async with contextlib.AsyncExitStack() as stack:
        for replica in replicas:
            stack.push_async_callback(replica.kill)
        pool = await stack.enter_async_context(EndpointPool(_config(urls, vllm_server.model)))
        client = pool.client("local")

        async def kill_a_busy_replica() -> None:
            # Once both replicas serve episodes, the one with the most calls in flight dies.
            while min(len(r.chats) for r in replicas) < 2 or not any(r.outstanding for r in client.replicas):
                await asyncio.sleep(0.005)
            busiest = max(client.replicas, key=lambda r: r.outstanding)
            killed.append(busiest.index)
            await replicas[busiest.index].kill()

        killer = asyncio.create_task(kill_a_busy_replica())
        summary = await run_graph(
            get_graph(EXAMPLE), pool, RunParams(n=6), run_dir, concurrency=3, progress=False
        )
        assert killer.done() and len(killed) == 1, "the run ended before a replica was killed"
        dead, alive = killed[0], 1 - killed[0]
        assert not client.replicas[dead].up and client.replicas[alive].up
    assert summary.failed == 0 and summary.finished == 6
    assert len(replicas[alive].chats) > len(replicas[dead].chats)  # the survivor took the dead one's calls
    with Store(run_dir) as store:
        episodes = store.episodes()
        assert len(episodes) == 6 and {e.status for e in episodes} == {"finished"}
        for episode in episodes:
            path = tuple(step.node for step in store.steps(episode_id=episode.id))
            assert path in VALID_PATHS, (episode.id, path)  # a retried call is one step, not two
    rolegraph = Path(sys.executable).with_name("rolegraph")
    check = subprocess.run([rolegraph, "runs", "check", run_dir], capture_output=True, text=True, timeout=120)
    assert check.returncode == 0 and check.stdout.strip().endswith(": ok"), check.stdout + check.stderr


@pytest.mark.train
async def test_the_hand_off_loads_the_adapter_through_every_replica_before_the_binding_moves(
    vllm_server: VLLMServer,
    distinct_adapter: Path,  # noqa: F811 (the fixture)
    adapter_registry: AdapterRegistry,  # noqa: F811 (the fixture)
) -> None:
    # Two addresses of one server: the second answers "already loaded" (HTTP 400), and its model card shows
    # the same adapter directory, which is success.
    replicas = [Forwarder(_port(vllm_server.base_url)) for _ in range(2)]
    urls = [await replica.start() for replica in replicas]
    async with contextlib.AsyncExitStack() as stack:
        for replica in replicas:
            stack.push_async_callback(replica.kill)
        pool = await stack.enter_async_context(EndpointPool(_config(urls, vllm_server.model)))
        client = pool.client("local")
        at_swap: dict[str, Any] = {}
        swap = pool.swap

        async def checked_swap(role: str, endpoint: str, model: str, **options: Any) -> None:
            at_swap["loads"] = [
                [r for r in replica.requests if r == "POST /v1/load_lora_adapter"] for replica in replicas
            ]
            at_swap["listed"] = [
                model in {card["id"] for card in await client.model_cards(replica=replica)}
                for replica in client.replicas
            ]
            at_swap["bound"] = pool.resolve(role)[1]
            await swap(role, endpoint, model, **options)

        pool.swap = checked_swap  # type: ignore[method-assign]
        adapter = adapter_registry.publish("solver", distinct_adapter)
        report = await hand_off(pool, "solver", adapter)

        assert report.swapped and pool.resolve("solver")[1] == adapter.lora_name
        assert all(at_swap["loads"]), at_swap  # each replica was asked to load it, before the swap
        assert at_swap["listed"] == [True, True] and at_swap["bound"] == vllm_server.model
        greedy = SamplingParams(temperature=0.0, max_tokens=12)
        for url in urls:  # each replica, on its own, answers with the adapter's output
            async with Client("one", url) as one:
                result = await one.chat(
                    [{"role": "user", "content": "Say hello."}], model=adapter.lora_name, sampling=greedy
                )
            assert MARK in result.text, (url, result.text)
