"""Sandbox pools as Ray actors: one warm `SandboxPool` per node that has docker or bubblewrap, reached through
`RaySandboxPool`, which has the interface environment nodes use and forwards each execution to an actor.

The hook for the cluster runtime (stable):

    pool = start_sandbox_actors(backend, width=2)   # on the driver, connected to Ray: it owns the actors
    provider = ray_sandbox_provider(pool)           # anywhere `pool` was shipped (it pickles with Ray)
    graph = compile_spec(path, sandbox=provider)    # env nodes now run their code on the actors
    ...
    pool.close()                                    # on the driver: the actors and their workers stop

Each actor runs the very `SandboxPool` a single machine runs (same backend, same limits), so isolation is the
same. Calls go to the actor with the fewest outstanding calls from this process; an actor that died is
dropped and the call is retried on another; with none left the call raises `SandboxError`, an
infrastructure failure: the reward is None, never 0.

Ray is imported only inside functions: importing this module neither starts nor loads Ray.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import threading
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from rolegraph.environments.sandbox.base import ExecResult, Limits
from rolegraph.environments.sandbox.pool import DEFAULT_HEAVY_MODULES, DEFAULT_PRELOAD, Job, JobShortcuts
from rolegraph.errors import RolegraphError, SandboxError

SANDBOX_RESOURCE = "sandbox"
"""A custom Ray resource marking sandbox nodes: when any node offers it, only those nodes host sandboxes."""
ISOLATING_BACKENDS = ("docker", "bwrap")
"""In the order `auto` prefers them, as on one machine."""
DEFAULT_WIDTH = 2
"""Sandbox workers per node when neither the caller nor the node's `sandbox` resource says."""
DOCTOR_TIMEOUT_S = 120.0
STOP_GRACE_S = 10.0
"""How long `close()` lets actors stop their sandbox workers before it kills them."""
DOCTOR_HINT = "run `rolegraph sandbox doctor --ray` to see each node's backends"


# ------------------------------------------------------------------------------------------- node backends


@dataclass(frozen=True)
class NodeBackends:
    """One Ray node and which sandbox backends work there (`reasons[name]` is None when it works)."""

    node_id: str
    address: str
    resources: Mapping[str, float]
    reasons: Mapping[str, str | None]
    """Backend name → None when it works, else why not; empty when the doctor task itself failed."""
    error: str | None = None
    """Why the doctor task could not run on the node (then no backend is known to work there)."""

    def works(self, backend: str) -> bool:
        return backend in self.reasons and self.reasons[backend] is None

    def choose(self, backend: str) -> str | None:
        """The concrete backend an actor on this node runs for `backend` (`auto`: docker, else bwrap)."""
        if backend == "auto":
            return next((name for name in ISOLATING_BACKENDS if self.works(name)), None)
        return backend if self.works(backend) else None

    def offers(self, resource: str) -> bool:
        return self.resources.get(resource, 0.0) > 0

    def width(self, resource: str | None) -> int:
        """The pool width this node asks for: the amount of `resource` it offers, else DEFAULT_WIDTH."""
        amount = self.resources.get(resource, 0.0) if resource else 0.0
        return max(1, int(amount)) if amount > 0 else DEFAULT_WIDTH

    def why_not(self, backend: str) -> str:
        """Why no sandbox runs here, for error messages."""
        if self.error:
            return self.error
        names = ISOLATING_BACKENDS if backend == "auto" else (backend,)
        return "; ".join(f"{name}: {self.reasons.get(name) or 'not checked'}" for name in names)


def node_doctor() -> dict[str, str | None]:
    """The checks `rolegraph sandbox doctor` runs, on this machine: backend → None (works) or why not."""
    from rolegraph.environments.sandbox.selection import make_backend

    return {name: make_backend(name).check() for name in (*ISOLATING_BACKENDS, "unsafe-local")}


def doctor_nodes(timeout_s: float = DOCTOR_TIMEOUT_S) -> list[NodeBackends]:
    """Run `node_doctor` as a Ray task pinned to each alive node of the connected cluster."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    task = ray.remote(num_cpus=0, max_retries=0)(node_doctor)
    nodes = [node for node in ray.nodes() if node.get("Alive")]
    refs = [
        task.options(scheduling_strategy=NodeAffinitySchedulingStrategy(node["NodeID"], soft=False)).remote()
        for node in nodes
    ]
    reports = []
    for node, ref in zip(nodes, refs, strict=True):
        reasons: dict[str, str | None] = {}
        error = None
        try:
            reasons = ray.get(ref, timeout=timeout_s)
        except Exception as exc:  # a node that died or hangs is reported, not fatal
            error = f"the doctor task failed on this node: {type(exc).__name__}"
        reports.append(
            NodeBackends(
                node_id=node["NodeID"],
                address=str(node.get("NodeManagerAddress", "")),
                resources=dict(node.get("Resources", {})),
                reasons=reasons,
                error=error,
            )
        )
    return reports


def sandbox_nodes(
    reports: Sequence[NodeBackends], backend: str = "auto", resource: str | None = SANDBOX_RESOURCE
) -> list[tuple[NodeBackends, str]]:
    """The nodes that get a sandbox actor, with the backend each runs.

    With `resource` offered by some node, only those nodes qualify (the operator marked them); otherwise
    every node does. Either way a node where the backend does not work never gets an actor."""
    marked = [r for r in reports if resource and r.offers(resource)]
    chosen = []
    for report in marked or reports:
        name = report.choose(backend)
        if name is not None:
            chosen.append((report, name))
    return chosen


# --------------------------------------------------------------------------------------------- the actor


@dataclass(frozen=True)
class RemoteFailure:
    """A typed error raised inside an actor, carried back as data so the caller raises the same type."""

    error_type: type[RolegraphError]
    message: str
    hint: str | None

    def raise_(self) -> None:
        raise self.error_type(self.message, self.hint)


class SandboxPoolActor:
    """The body of a sandbox actor: the same `SandboxPool` one machine runs, on the node it is pinned to."""

    def __init__(
        self,
        backend: str,
        width: int,
        limits: Limits | None,
        preload: Sequence[str] = DEFAULT_PRELOAD,
        heavy_modules: Sequence[str] = DEFAULT_HEAVY_MODULES,
    ) -> None:
        from rolegraph.environments.sandbox.pool import SandboxPool

        self.pool = SandboxPool(
            backend, size=width, limits=limits, preload=preload, heavy_modules=heavy_modules
        )

    def execute(self, job: Job) -> ExecResult | RemoteFailure:
        try:
            return self.pool.execute(job)
        except RolegraphError as exc:
            return RemoteFailure(type(exc), exc.message, exc.hint)

    def describe(self) -> dict[str, Any]:
        """Where the actor runs and what it runs: node id, pid, backend, width."""
        import os

        import ray

        return {
            "node_id": ray.get_runtime_context().get_node_id(),
            "pid": os.getpid(),
            "backend": self.pool.backend.name,
            "width": self.pool.size,
        }

    def close(self) -> None:
        self.pool.close()


# ----------------------------------------------------------------------------------- balancing + failover


@dataclass(eq=False)
class ActorSlot:
    """One sandbox actor as a client sees it: its handle, where it runs, and the calls this client has
    outstanding on it."""

    handle: Any
    node_id: str
    backend: str
    width: int
    outstanding: int = 0
    alive: bool = True


class NoSandboxLeft(SandboxError):
    """Every sandbox actor of a pool has died (or none was ever started)."""


class Balancer:
    """Hands out the live slot with the fewest outstanding calls (round robin among ties); thread-safe."""

    def __init__(self, slots: Sequence[ActorSlot]) -> None:
        self.slots = list(slots)
        self._lock = threading.Lock()
        self._turn = itertools.count()

    def acquire(self) -> ActorSlot:
        with self._lock:
            live = [slot for slot in self.slots if slot.alive]
            if not live:
                raise NoSandboxLeft(
                    "no sandbox actor is left: every one has died or none could start", DOCTOR_HINT
                )
            least = min(slot.outstanding for slot in live)
            ties = [slot for slot in live if slot.outstanding == least]
            slot = ties[next(self._turn) % len(ties)]
            slot.outstanding += 1
            return slot

    def release(self, slot: ActorSlot) -> None:
        with self._lock:
            slot.outstanding -= 1

    def drop(self, slot: ActorSlot) -> None:
        """Take a dead actor out for good."""
        with self._lock:
            slot.alive = False

    @property
    def live(self) -> list[ActorSlot]:
        with self._lock:
            return [slot for slot in self.slots if slot.alive]


class Transport(Protocol):
    """How a client reaches actors: Ray in production, a fake in unit tests."""

    def submit(self, handle: Any, job: Job) -> Any:
        """Start `handle.execute(job)`; returns a reference to its result."""
        ...

    def get(self, ref: Any) -> Any:
        """Block until the result is there; raises what the call raised."""
        ...

    def wait(self, ref: Any) -> Awaitable[Any]:
        """Await the result in an event loop."""
        ...

    def actor_gone(self, exc: BaseException) -> bool:
        """True when `exc` says the actor itself died or cannot be reached (not the call's own failure)."""
        ...

    def stop(self, handles: Sequence[Any]) -> None:
        """Stop these actors (their sandbox workers first, when they still answer)."""
        ...


class RayTransport:
    """The Transport over Ray actor handles."""

    def submit(self, handle: Any, job: Job) -> Any:
        return handle.execute.remote(job)

    def get(self, ref: Any) -> Any:
        import ray

        return ray.get(ref)

    async def wait(self, ref: Any) -> Any:
        return await ref

    def actor_gone(self, exc: BaseException) -> bool:
        from ray.exceptions import NodeDiedError, RayActorError

        return isinstance(exc, RayActorError | NodeDiedError)

    def stop(self, handles: Sequence[Any]) -> None:
        import ray

        closing = []
        for handle in handles:
            with contextlib.suppress(Exception):
                closing.append(handle.close.remote())
        with contextlib.suppress(Exception):
            ray.wait(closing, num_returns=len(closing), timeout=STOP_GRACE_S)
        for handle in handles:
            with contextlib.suppress(Exception):  # already dead
                ray.kill(handle, no_restart=True)


@dataclass(frozen=True)
class RemoteBackend:
    """What `pool.backend` says about a Ray pool: the backends of its actors; isolated (no warning)."""

    name: str
    warns: bool = False


@dataclass
class RaySandboxPool(JobShortcuts):
    """A `SandboxPool` whose executions run on sandbox actors. Thread-safe and picklable: a copy shipped to
    another process (a Ray worker) reaches the same actors, balances its own calls, and never kills them."""

    slots: list[ActorSlot]
    limits: Limits = field(default_factory=Limits)
    transport: Transport = field(default_factory=RayTransport)
    owner: bool = True
    """Only the process that started the actors stops them on `close()`."""

    def __post_init__(self) -> None:
        self._balancer = Balancer(self.slots)
        self._closed = False

    def __getstate__(self) -> dict[str, Any]:
        slots = [ActorSlot(s.handle, s.node_id, s.backend, s.width, alive=s.alive) for s in self.slots]
        return {"slots": slots, "limits": self.limits, "transport": self.transport, "owner": False}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self.__post_init__()

    @property
    def size(self) -> int:  # type: ignore[override]  # derived from the live actors, so read-only here
        """The total width of the live actors: how many executions can run at once."""
        return max(1, sum(slot.width for slot in self._balancer.live))

    @property
    def backend(self) -> RemoteBackend:
        names = sorted({slot.backend for slot in self._balancer.live}) or ["none"]
        return RemoteBackend("ray:" + "+".join(names))

    # ------------------------------------------------------------------------------------------ running

    def execute(self, job: Job) -> ExecResult:
        """Run one job on the least busy live actor, failing over while actors die."""
        while True:
            slot = self._acquire()
            try:
                reply = self.transport.get(self.transport.submit(slot.handle, job))
            except Exception as exc:
                self._failed(slot, exc)
                continue
            finally:
                self._balancer.release(slot)
            return _unwrap(reply)

    async def aexecute(self, job: Job) -> ExecResult:
        while True:
            slot = self._acquire()
            try:
                reply = await self.transport.wait(self.transport.submit(slot.handle, job))
            except Exception as exc:
                self._failed(slot, exc)
                continue
            finally:
                self._balancer.release(slot)
            return _unwrap(reply)

    def _acquire(self) -> ActorSlot:
        if self._closed:
            raise SandboxError("the sandbox pool is closed", "start the sandbox actors again")
        return self._balancer.acquire()

    def _failed(self, slot: ActorSlot, exc: Exception) -> None:
        """Drop the actor when it is gone (the caller retries elsewhere); anything else is infrastructure."""
        if self.transport.actor_gone(exc):
            self._balancer.drop(slot)
            return
        raise SandboxError(
            f"the sandbox actor on node {slot.node_id[:12]} failed: {type(exc).__name__}", DOCTOR_HINT
        ) from exc

    async def amap(self, jobs: Sequence[Job], *, width: int | None = None) -> list[ExecResult]:
        gate = asyncio.Semaphore(max(1, width or self.size))

        async def run_one(job: Job) -> ExecResult:
            async with gate:
                return await self.aexecute(job)

        return list(await asyncio.gather(*(run_one(job) for job in jobs)))

    def session(self, limits: Limits | None = None) -> Any:
        """Stateful interpreter sessions hold one worker across calls; they are not offered through Ray."""
        raise SandboxError(
            "interpreter sessions do not run on Ray sandbox actors",
            "run the graph without --ray, or give its sessions no shared pool (a fresh worker each)",
        )

    # --------------------------------------------------------------------------------------- lifecycle

    def close(self) -> None:
        """Stop the actors (and their sandbox workers) when this process started them. Idempotent."""
        if self._closed:
            return
        self._closed = True
        if self.owner:
            self.transport.stop([slot.handle for slot in self.slots])

    def __enter__(self) -> RaySandboxPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _unwrap(reply: ExecResult | RemoteFailure) -> ExecResult:
    if isinstance(reply, RemoteFailure):
        reply.raise_()
    assert isinstance(reply, ExecResult)
    return reply


# ------------------------------------------------------------------------------------------ starting up


def start_sandbox_actors(
    backend: str = "auto",
    *,
    width: int | None = None,
    limits: Limits | None = None,
    resource: str | None = SANDBOX_RESOURCE,
    preload: Sequence[str] = DEFAULT_PRELOAD,
    heavy_modules: Sequence[str] = DEFAULT_HEAVY_MODULES,
) -> RaySandboxPool:
    """Start one sandbox actor on every node that can run `backend` and return the pool that reaches them.

    Call it in a process connected to Ray (the driver): that process owns the actors, and `close()` stops
    them. `width` is each actor's pool size; None: per node, the amount of `resource` the node offers (`ray
    start --resources='{"sandbox": 8}'` gives that node 8), else DEFAULT_WIDTH. `resource` marks the sandbox
    nodes (see `sandbox_nodes`). Raises `SandboxError` when no
    node can host a sandbox. The actors take no CPU from Ray's scheduler: their sandboxes are processes of
    their own, bounded by `width`.
    """
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    reports = doctor_nodes()
    chosen = sandbox_nodes(reports, backend, resource)
    if not chosen:
        why = "; ".join(f"node {r.node_id[:12]}: {r.why_not(backend)}" for r in reports) or "no node is alive"
        raise SandboxError(f"no Ray node can run the {backend} sandbox backend ({why})", DOCTOR_HINT)
    actor_class = ray.remote(SandboxPoolActor)
    slots = []
    for report, name in chosen:
        size = width or report.width(resource)
        handle = actor_class.options(
            num_cpus=0,
            max_restarts=0,
            max_concurrency=2 * size + 2,  # runs wait in the pool's lanes, not in Ray's queue
            scheduling_strategy=NodeAffinitySchedulingStrategy(report.node_id, soft=False),
        ).remote(name, size, limits, preload, heavy_modules)
        slots.append(ActorSlot(handle, report.node_id, name, size))
    transport = RayTransport()
    started = []
    failures = []
    for slot in slots:
        try:
            ray.get(slot.handle.describe.remote())
            started.append(slot)
        except Exception as exc:  # e.g. the pool's workers could not start on that node
            failures.append(f"node {slot.node_id[:12]}: {type(exc).__name__}: {exc}"[:300])
            transport.stop([slot.handle])
    if not started:
        raise SandboxError(f"no sandbox actor could start ({'; '.join(failures)})", DOCTOR_HINT)
    return RaySandboxPool(started, limits=limits or Limits(), transport=transport)


SandboxProvider = Callable[[], Awaitable[Any]]


def ray_sandbox_provider(pool: RaySandboxPool) -> SandboxProvider:
    """The `sandbox=` provider for `compile_spec` / `build_state_graph` that hands env nodes this pool."""

    async def provide() -> RaySandboxPool:
        return pool

    return provide
