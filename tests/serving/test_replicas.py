"""Endpoint replicas without a server: the router's rules (sticky per episode, least outstanding, taken out),
and the client over fake transports (failover inside the call, adapters on every replica, revival), up to a
run whose replica dies mid-way (every episode finishes, every step recorded once)."""

from __future__ import annotations

import asyncio
import json
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx2
import pytest

from rolegraph.config import EndpointConfig, SamplingParams
from rolegraph.errors import EndpointDownError, EndpointError, RequestRejectedError
from rolegraph.graphs.base import RunParams
from rolegraph.graphs.registry import get_graph
from rolegraph.graphs.runtime import run_graph
from rolegraph.serving.client import Client, ServerFailedError
from rolegraph.serving.replicas import ReplicaRouter
from rolegraph.serving.routing import current_episode
from rolegraph.store import Store
from rolegraph.store.check import check_run

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "critique" / "graph.yaml"
HI = [{"role": "user", "content": "hi"}]
TINY = SamplingParams(max_tokens=4)

# --- the router ----------------------------------------------------------------------------------------


def test_an_episode_sticks_to_its_replica_and_new_episodes_go_to_the_least_loaded() -> None:
    router = ReplicaRouter(["a", "b", "c"])
    a, b, c = router.replicas
    with router.outstanding(a), router.outstanding(a), router.outstanding(b):
        first = router.choose("e1")
        assert first is c  # the only idle replica
        with router.outstanding(c), router.outstanding(c), router.outstanding(c):
            assert router.choose("e1") is c  # sticky, however loaded c is now
            assert router.choose("e2") is b  # a new episode: fewest outstanding (b has 1, a 2, c 3)
    assert router.choose("e1") is c and router.choose("e2") is b
    assert router.replica_of("e1") is c


def test_calls_outside_an_episode_are_balanced_by_outstanding_requests() -> None:
    router = ReplicaRouter(["a", "b"])
    a, b = router.replicas
    with router.outstanding(a):
        assert router.choose(None) is b
    turns = []
    for _ in range(4):  # idle replicas take turns: the one routed fewer calls so far first
        replica = router.choose(None)
        assert replica is not None
        with router.outstanding(replica):
            turns.append(replica.index)
    assert turns == [1, 0, 1, 0]
    with router.outstanding(b):
        assert router.choose(None) is a


def test_a_taken_out_replica_gets_no_calls_and_its_episodes_move_until_it_is_back() -> None:
    router = ReplicaRouter(["a", "b"])
    a, b = router.replicas
    assert router.choose("e1") is a
    assert router.take_out(a, "refused") is True and router.take_out(a, "again") is False
    assert router.choose("e1") is b and router.choose("e2") is b and router.choose(None) is b
    assert a.down_reason == "again" and not router.has_live(exclude={b.index})
    router.bring_back(a)
    assert router.choose("e1") is b  # moved for good: its prefix cache is on b now
    assert router.choose("e3") is a


def test_with_every_replica_down_a_down_one_is_still_tried_and_none_once_all_were() -> None:
    router = ReplicaRouter(["a", "b"])
    for replica in router.replicas:
        router.take_out(replica, "refused")
    first = router.choose("e1")
    assert first is not None and not first.up
    assert router.choose("e1", exclude={0, 1}) is None


# --- the client over fake transports -------------------------------------------------------------------


def _chat_answer(text: str, model: str) -> dict[str, Any]:
    return {
        "id": "x",
        "object": "chat.completion",
        "created": 0,
        "model": model,
        "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": text}}],
        "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5},
    }


@dataclass
class FakeServer:
    """One fake vLLM server: what it serves, whether it answers, what it was asked."""

    adapters: dict[str, str] = field(default_factory=dict)
    """Loaded adapter name → path (as vLLM's model card `root`)."""
    reachable: bool = True
    status: int = 200
    """The status of generation requests (e.g. 503)."""
    refuse_loads: bool = False
    chats: list[dict[str, Any]] = field(default_factory=list)
    loads: list[str] = field(default_factory=list)

    def answer(self, request: httpx2.Request, reply: Any) -> httpx2.Response:
        if not self.reachable:
            raise httpx2.ConnectError("connection refused", request=request)
        path = request.url.path
        if path == "/v1/models":
            cards = [{"id": "base", "parent": None, "root": "/models/base"}]
            cards += [{"id": n, "parent": "base", "root": p} for n, p in self.adapters.items()]
            return httpx2.Response(200, json={"object": "list", "data": cards})
        body = json.loads(request.content)
        if path == "/v1/load_lora_adapter":
            name = body["lora_name"]
            if self.refuse_loads or name in self.adapters:  # vLLM refuses a name it serves: HTTP 400
                return httpx2.Response(400, json={"error": {"message": f"cannot load '{name}'"}})
            self.adapters[name] = body["lora_path"]
            self.loads.append(name)
            return httpx2.Response(200, text="Success")
        if path == "/v1/unload_lora_adapter":
            if self.adapters.pop(body["lora_name"], None) is None:
                return httpx2.Response(404, json={"error": {"message": "cannot be found"}})
            return httpx2.Response(200, text="Success")
        if path == "/metrics":
            return httpx2.Response(200, text="")
        self.chats.append(body)
        if self.status != 200:
            return httpx2.Response(self.status, json={"error": {"message": "overloaded"}})
        return httpx2.Response(200, json=_chat_answer(reply(body), body["model"]))


def _replicated(
    servers: dict[int, FakeServer], reply: Any = None, **options: Any
) -> tuple[Client, list[int]]:
    """A client whose replica i is http://127.0.0.1:900i/v1, answered by `servers[i]` (several ports may share
    one server: the same server behind two addresses); also returns the port of every request, in order."""
    ports: list[int] = []

    def handler(request: httpx2.Request) -> httpx2.Response:
        port = int(request.url.port or 0)
        ports.append(port)
        return servers[port - 9000].answer(request, reply or (lambda body: "ok"))

    http = httpx2.AsyncClient(transport=httpx2.MockTransport(handler))
    urls = [f"http://127.0.0.1:{9000 + i}/v1" for i in sorted(servers)]
    options = {"backoff_s": 0.001, "max_backoff_s": 0.002, "max_retries": 2, **options}
    return Client("rep", urls, http_client=http, **options), ports


async def _in_episode(episode: str, client: Client) -> str:
    current_episode.set(episode)  # as the runtime does; a task has its own context
    sampling = TINY.model_copy(update={"extra": {"episode": episode}})  # lets the fake server tell
    return (await client.chat(HI, model="base", sampling=sampling)).text


async def test_each_episode_keeps_one_replica_and_episodes_spread_over_replicas() -> None:
    servers = {0: FakeServer(), 1: FakeServer()}
    client, ports = _replicated(servers)
    for _ in range(3):
        await asyncio.gather(*(asyncio.create_task(_in_episode(f"e{i}", client)) for i in range(4)))
    assert len(ports) == 12
    assert len(servers[0].chats) == len(servers[1].chats) == 6  # 4 concurrent episodes: 2 per replica
    by_episode: dict[str, set[int]] = defaultdict(set)
    for index, server in servers.items():
        for body in server.chats:
            by_episode[body["episode"]].add(index)
    assert len(by_episode) == 4 and all(len(indices) == 1 for indices in by_episode.values())
    await client.aclose()


async def test_an_unreachable_replica_is_taken_out_and_the_call_retried_on_another_once() -> None:
    servers = {0: FakeServer(), 1: FakeServer()}
    client, ports = _replicated(servers, revive_interval_s=60)
    assert await _in_episode("e1", client) == "ok"
    stuck = client.router.replica_of("e1")
    assert stuck is not None
    servers[stuck.index].reachable = False
    other = 1 - stuck.index
    ports.clear()
    assert await _in_episode("e1", client) == "ok"
    # One attempt on the dead replica (no waiting on it while another can answer), then the other replica.
    assert ports == [9000 + stuck.index, 9000 + other]
    assert not client.replicas[stuck.index].up and client.replicas[other].up
    assert len(servers[other].chats) == 1  # answered once: the caller gets one result to record
    assert await _in_episode("e2", client) == "ok" and len(servers[other].chats) == 2
    await client.aclose()


async def test_an_overloaded_replica_is_not_taken_out_and_every_replica_down_is_endpoint_down() -> None:
    servers = {0: FakeServer(status=503), 1: FakeServer(status=503)}
    client, _ = _replicated(servers)
    with pytest.raises(ServerFailedError):  # an answer, however bad, is not a dead replica
        await _in_episode("e1", client)
    assert all(replica.up for replica in client.replicas)
    for server in servers.values():
        server.reachable = False
    with pytest.raises(EndpointDownError, match="every replica of endpoint 'rep' is unreachable") as info:
        await _in_episode("e1", client)
    assert "\n" not in str(info.value) and info.value.hint
    assert not any(replica.up for replica in client.replicas)
    await client.aclose()


async def test_adapters_load_into_every_replica_before_returning_and_not_at_all_if_one_refuses() -> None:
    servers = {0: FakeServer(), 1: FakeServer()}
    client, _ = _replicated(servers)
    await client.load_adapter("solver-v1", "/adapters/solver/v1")
    assert servers[0].adapters == servers[1].adapters == {"solver-v1": "/adapters/solver/v1"}
    assert "solver-v1" in await client.list_models()
    servers[1].refuse_loads = True
    with pytest.raises(RequestRejectedError, match=r"could not load adapter 'solver-v2'.*127\.0\.0\.1:9001"):
        await client.load_adapter("solver-v2", "/adapters/solver/v2")
    assert "solver-v2" not in servers[0].adapters  # loaded there, then unloaded again: all or none
    await client.unload_adapter("solver-v1")
    assert servers[0].adapters == servers[1].adapters == {}
    await client.aclose()


async def test_one_server_behind_two_addresses_loads_once_and_a_name_clash_is_an_error() -> None:
    shared = FakeServer()
    client, _ = _replicated({0: shared, 1: shared})
    await client.load_adapter("solver-v1", "/adapters/solver/v1")
    assert shared.loads == ["solver-v1"]  # the second address answered 400, and its card shows this very path
    await client.load_adapter("solver-v1", "/adapters/solver/v1/")  # a retried hand-off: nothing to do
    with pytest.raises(RequestRejectedError, match="already serves another adapter by that name"):
        await client.load_adapter("solver-v1", "/adapters/other")
    await client.unload_adapter("solver-v1")  # the second address no longer has it: still fine
    assert shared.adapters == {}
    await client.aclose()


async def test_a_replica_that_answers_again_first_loads_the_adapters_then_takes_calls() -> None:
    servers = {0: FakeServer(), 1: FakeServer()}
    client, _ = _replicated(servers, revive_interval_s=0.01)
    servers[0].reachable = False
    assert await _in_episode("e1", client) == "ok"
    assert not client.replicas[0].up
    await client.load_adapter("solver-v1", "/adapters/solver/v1")  # only replica 1 is live
    assert servers[0].adapters == {}
    servers[0].reachable = True
    for _ in range(200):
        if client.replicas[0].up:
            break
        await asyncio.sleep(0.01)
    assert client.replicas[0].up and servers[0].adapters == {"solver-v1": "/adapters/solver/v1"}
    await client.aclose()


async def test_a_single_server_keeps_todays_behaviour() -> None:
    servers = {0: FakeServer(reachable=False)}
    client, ports = _replicated(servers)
    with pytest.raises(EndpointDownError, match="after 3 attempts"):
        await _in_episode("e1", client)
    assert len(ports) == 3 and client.replicas[0].up  # retried as before, never taken out
    await client.aclose()


# --- a run whose replica dies ---------------------------------------------------------------------------


class ReplicaPool:
    """Every role resolves to one replicated client (the runtime's view of EndpointPool)."""

    def __init__(self, client: Client) -> None:
        self.client = client

    def resolve(self, role: str) -> tuple[Client, str, SamplingParams]:
        return self.client, "base", SamplingParams(max_tokens=16)


def _critique_reply(body: dict[str, Any]) -> str:
    last = body["messages"][-1]["content"]
    return "Fine.\nACCEPT" if "Proposed solution" in last else "The answer is \\boxed{9}."


async def test_a_run_whose_replica_dies_finishes_every_episode_and_records_each_call_once(
    tmp_path: Path,
) -> None:
    servers = {0: FakeServer(), 1: FakeServer(), 2: FakeServer()}
    calls: Counter[int] = Counter()

    def reply(body: dict[str, Any]) -> str:
        calls[0] += 1
        if calls[0] == 6:  # mid-run, mid-request: this call's replica dies, its connection drops
            dying = next(server for server in servers.values() if server.chats and server.chats[-1] is body)
            dying.reachable = False
            raise httpx2.ReadError("connection reset by peer")
        return _critique_reply(body)

    client, _ = _replicated(servers, reply, revive_interval_s=60)
    summary = await run_graph(
        get_graph(EXAMPLE), ReplicaPool(client), RunParams(n=6), tmp_path, concurrency=3, progress=False
    )
    await client.aclose()
    assert summary.failed == 0 and summary.finished == 6
    assert sum(not replica.up for replica in client.replicas) == 1
    with Store(tmp_path) as store:
        episodes = store.episodes()
        assert len(episodes) == 6 and {(e.status, e.kept) for e in episodes} == {("finished", True)}
        for episode in episodes:
            nodes = [s.node for s in store.steps(episode_id=episode.id)]
            assert nodes == ["solve", "critique", "check"]  # each call recorded once, failover or not
        role_steps = [s for s in store.steps() if s.kind == "role"]
    answered = sum(len(server.chats) for server in servers.values()) - 1  # the one lost with the replica
    assert len(role_steps) == answered == 12
    assert check_run(tmp_path) == []


def test_replica_urls_in_the_config() -> None:
    one = EndpointConfig(base_url="http://127.0.0.1:8000/v1")
    assert one.replica_urls == ["http://127.0.0.1:8000/v1"]
    two = EndpointConfig(base_url=["http://127.0.0.1:8000/v1", "http://127.0.0.1:8001"])
    assert two.replica_urls == ["http://127.0.0.1:8000/v1", "http://127.0.0.1:8001"]
    assert EndpointConfig(base_url=["http://127.0.0.1:8000"]).base_url == "http://127.0.0.1:8000"
    with pytest.raises(ValueError, match="listed twice"):
        EndpointConfig(base_url=["http://127.0.0.1:8000/v1", "http://127.0.0.1:8000/"])


def test_launched_replicas_share_the_spec_identity_and_get_their_own_gpus() -> None:
    from rolegraph.config import LaunchSpec
    from rolegraph.serving.launcher import _state_path, replica_gpus, spec_hash

    one, three = LaunchSpec(), LaunchSpec(replicas=3)
    assert spec_hash(one, "m") == spec_hash(three, "m")  # each replica is a server of the same spec
    assert _state_path("local", "d", 0).name == "local-d.json"  # replica 0 reuses the existing state file
    assert _state_path("local", "d", 2).name == "local-d-r2.json"
    gpu = LaunchSpec(device="gpu", replicas=2, num_gpus=2)
    assert [replica_gpus(gpu, i) for i in (0, 1)] == ["0,1", "2,3"]
    assert replica_gpus(gpu, 1, "4,5,6,7") == "6,7"
    assert replica_gpus(one, 1) is None and replica_gpus(LaunchSpec(device="gpu", num_gpus=0.5), 0) is None
    with pytest.raises(EndpointError, match="lists 2"):
        replica_gpus(gpu, 1, "4,5")
