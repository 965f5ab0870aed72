"""The Ray sandbox client's balancing, failover and node choice, with fake actors (Ray is never started)."""

from __future__ import annotations

import asyncio
import pickle
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import pytest

from rolegraph.environments.sandbox.base import ExecResult, Status
from rolegraph.environments.sandbox.pool import Job
from rolegraph.environments.sandbox.ray_pool import (
    ActorSlot,
    NodeBackends,
    RaySandboxPool,
    RemoteFailure,
    sandbox_nodes,
)
from rolegraph.errors import FailureKind, ProgramTimeoutError, SandboxError


class ActorDied(Exception):
    """What the fake transport raises for a dead actor (Ray's RayActorError in production)."""


ACTORS: dict[str, FakeActor] = {}
"""Fake actors by name: a pickled handle comes back as the same actor, as a Ray handle does."""


class FakeActor:
    """Answers every job with its name on stdout; `dead` makes every call raise ActorDied. Can be held
    busy (its calls block on `gate`) to build outstanding calls."""

    def __init__(self, name: str) -> None:
        ACTORS[name] = self
        self.name = name
        self.dead = False
        self.calls = 0
        self.gate = threading.Event()
        self.gate.set()
        self.reply: ExecResult | RemoteFailure | None = None

    def execute(self, job: Job) -> ExecResult | RemoteFailure:
        self.gate.wait(timeout=5)
        if self.dead:
            raise ActorDied(self.name)
        self.calls += 1
        return self.reply or ExecResult(status=Status.OK, stdout=self.name, backend="fake")

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return actor_named, (self.name,)


def actor_named(name: str) -> FakeActor:
    return ACTORS[name]


class FakeTransport:
    def __init__(self) -> None:
        self.killed: list[FakeActor] = []

    def submit(self, handle: FakeActor, job: Job) -> Callable[[], Any]:
        return lambda: handle.execute(job)

    def get(self, ref: Callable[[], Any]) -> Any:
        return ref()

    async def wait(self, ref: Callable[[], Any]) -> Any:
        return await asyncio.to_thread(ref)

    def actor_gone(self, exc: BaseException) -> bool:
        return isinstance(exc, ActorDied)

    def stop(self, handles: Sequence[FakeActor]) -> None:
        self.killed.extend(handles)


def make_pool(*names: str) -> tuple[RaySandboxPool, list[FakeActor], FakeTransport]:
    actors = [FakeActor(name) for name in names]
    transport = FakeTransport()
    slots = [ActorSlot(actor, f"node-{actor.name}", "bwrap", 2) for actor in actors]
    return RaySandboxPool(slots, transport=transport), actors, transport


def test_calls_are_spread_evenly_over_idle_actors() -> None:
    pool, actors, _ = make_pool("a", "b", "c")
    outputs = [pool.run("print(1)").stdout for _ in range(9)]
    assert sorted(outputs) == sorted(["a", "b", "c"] * 3)
    assert [actor.calls for actor in actors] == [3, 3, 3]


def test_a_new_call_goes_to_the_actor_with_fewest_outstanding_calls() -> None:
    pool, actors, _ = make_pool("a", "b")
    for actor in actors:
        actor.gate.clear()  # calls hang until their actor's gate opens
    first = threading.Thread(target=pool.run, args=("x",))
    first.start()
    deadline = time.monotonic() + 5
    while sum(slot.outstanding for slot in pool.slots) < 1 and time.monotonic() < deadline:
        time.sleep(0.001)
    busy = next(slot for slot in pool.slots if slot.outstanding)
    idle = next(slot for slot in pool.slots if not slot.outstanding)
    idle.handle.gate.set()
    assert [pool.run("x").stdout for _ in range(3)] == [idle.handle.name] * 3
    busy.handle.gate.set()
    first.join()
    assert [slot.outstanding for slot in pool.slots] == [0, 0]


def test_a_dead_actor_is_dropped_and_the_call_retried_on_another() -> None:
    pool, actors, _ = make_pool("a", "b")
    actors[0].dead = True
    results = [pool.run("print(1)") for _ in range(4)]
    assert [r.stdout for r in results] == ["b"] * 4
    assert [slot.alive for slot in pool.slots] == [False, True]
    assert pool.size == 2  # only b's width is left
    assert pool.backend.name == "ray:bwrap"


def test_with_every_actor_dead_the_call_raises_an_infrastructure_error() -> None:
    pool, actors, _ = make_pool("a", "b")
    for actor in actors:
        actor.dead = True
    with pytest.raises(SandboxError) as raised:
        pool.run("print(1)")
    assert raised.value.kind == FailureKind.SANDBOX
    assert raised.value.kind.infrastructure  # env_or_none turns it into None, never a reward of 0


def test_async_calls_fail_over_too() -> None:
    pool, actors, _ = make_pool("a", "b", "c")
    actors[1].dead = True

    async def main() -> list[ExecResult]:
        return await pool.amap([Job(op="exec", code="x") for _ in range(6)], width=3)

    outputs = [r.stdout for r in asyncio.run(main())]
    assert len(outputs) == 6 and set(outputs) == {"a", "c"}
    actors[0].dead = actors[2].dead = True
    with pytest.raises(SandboxError):
        asyncio.run(pool.arun("x"))


def test_a_typed_error_raised_in_the_actor_is_raised_with_its_type() -> None:
    pool, actors, _ = make_pool("a")
    actors[0].reply = RemoteFailure(ProgramTimeoutError, "too slow", "raise the limit")
    with pytest.raises(ProgramTimeoutError) as raised:
        pool.run("x")
    assert raised.value.hint == "raise the limit"
    assert pool.slots[0].alive  # the call failed, not the actor


def test_an_unexpected_failure_of_the_call_is_a_sandbox_error_and_keeps_the_actor() -> None:
    pool, _, transport = make_pool("a")

    def broken(handle: FakeActor, job: Job) -> Callable[[], Any]:
        def fail() -> Any:
            raise RuntimeError("bug in the actor")

        return fail

    transport.submit = broken  # type: ignore[method-assign]
    with pytest.raises(SandboxError):
        pool.run("x")
    assert pool.slots[0].alive


def test_map_keeps_job_order_and_reports_each_result() -> None:
    pool, _, _ = make_pool("a", "b")
    done: list[int] = []
    results = pool.map([Job(op="exec", code=str(i)) for i in range(7)], on_done=lambda i, _: done.append(i))
    assert len(results) == 7 and sorted(done) == list(range(7))


def test_a_pickled_copy_reaches_the_same_actors_but_never_stops_them() -> None:
    pool, actors, transport = make_pool("a", "b")
    actors[0].dead = True
    pool.run("x")  # drops a
    remote: RaySandboxPool = pickle.loads(pickle.dumps(pool))
    assert not remote.owner
    assert [slot.alive for slot in remote.slots] == [False, True]
    assert remote.run("x").stdout == "b"
    remote.close()
    assert remote.transport.killed == []  # type: ignore[attr-defined]
    pool.close()
    assert sorted(a.name for a in transport.killed) == ["a", "b"]
    with pytest.raises(SandboxError):
        pool.run("x")


def report(node: str, resources: dict[str, float], **reasons: str | None) -> NodeBackends:
    return NodeBackends(node, "127.0.0.1", resources, reasons)


def test_only_nodes_with_a_working_backend_get_an_actor() -> None:
    works, broken = None, "not installed"
    reports = [
        report("both", {}, docker=works, bwrap=works),
        report("bwrap-only", {}, docker=broken, bwrap=works),
        report("neither", {}, docker=broken, bwrap=broken),
        NodeBackends("unreachable", "127.0.0.1", {}, {}, error="the doctor task failed"),
    ]
    chosen = sandbox_nodes(reports, "auto", resource=None)
    assert [(r.node_id, name) for r, name in chosen] == [("both", "docker"), ("bwrap-only", "bwrap")]
    assert [r.node_id for r, _ in sandbox_nodes(reports, "docker", None)] == ["both"]
    assert "not installed" in reports[2].why_not("auto")


def test_nodes_marked_with_the_sandbox_resource_are_the_only_hosts_and_set_the_width() -> None:
    reports = [
        report("head", {"CPU": 1}, docker="down", bwrap=None),
        report("cpu-node", {"CPU": 1, "sandbox": 8}, docker="down", bwrap=None),
    ]
    chosen = sandbox_nodes(reports, "auto")
    assert [r.node_id for r, _ in chosen] == ["cpu-node"]
    assert chosen[0][0].width("sandbox") == 8
    assert reports[0].width("sandbox") == 2
    unmarked = [report("a", {}, bwrap=None), report("b", {}, bwrap=None)]
    assert len(sandbox_nodes(unmarked, "bwrap")) == 2


def test_importing_the_ray_pool_loads_no_ray() -> None:
    code = (
        "import sys, rolegraph.environments.sandbox.ray_pool, rolegraph.cli.sandbox_cmd\n"
        "assert 'ray' not in sys.modules, 'ray was imported'"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
