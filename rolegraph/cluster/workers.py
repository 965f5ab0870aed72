"""Episode workers: Ray actors that each run the one runtime (`_Runner.episode`) on the episodes the driver
hands them, against the remote store and checkpointer, with their own endpoint clients."""

from __future__ import annotations

import dataclasses
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

from rolegraph.config import RolegraphConfig
from rolegraph.graphs.base import EpisodeInput, GraphDef

NO_SANDBOX_ENVS = frozenset({"python", "math.verify"})
"""Environment kinds that run on the host: a graph using only these needs no sandbox actors."""


@dataclasses.dataclass(frozen=True)
class GraphRef:
    """How a worker gets the graph: a spec path or a registry name (rebuilt there), or the GraphDef itself
    (cloudpickled) when neither reproduces it. `sandbox` is the Ray sandbox pool a spec's env nodes use."""

    spec_path: str | None = None
    name: str | None = None
    graph: GraphDef | None = None
    sandbox: Any = None

    def load(self) -> GraphDef:
        from rolegraph.graphs.registry import get_graph
        from rolegraph.graphs.spec import compile_spec

        if self.spec_path is not None:
            if self.sandbox is None:
                return compile_spec(self.spec_path)
            from rolegraph.environments.sandbox.ray_pool import ray_sandbox_provider

            return compile_spec(self.spec_path, sandbox=ray_sandbox_provider(self.sandbox))
        if self.name is not None:
            return get_graph(self.name)
        assert self.graph is not None
        return self.graph


def graph_ref(graph: GraphDef) -> GraphRef:
    """The cheapest faithful way to ship `graph` to a worker."""
    from rolegraph.graphs.registry import BUILTIN, get_graph

    path = getattr(graph, "path", None)
    if getattr(graph, "spec", None) is not None and path is not None:
        return GraphRef(spec_path=str(path))
    if graph.name in BUILTIN and get_graph(graph.name) is graph:
        return GraphRef(name=graph.name)
    return GraphRef(graph=graph)


def uses_sandbox(graph: GraphDef) -> bool:
    """The graph (a spec, or one of its subgraphs) has an environment node that runs in a sandbox."""
    spec = getattr(graph, "spec", None)
    if spec is None:
        return False
    if any(node.env is not None and node.env not in NO_SANDBOX_ENVS for node in spec.nodes.values()):
        return True
    return any(uses_sandbox(sub) for sub in getattr(graph, "subgraphs", {}).values())


def worker_config(pool: Any) -> RolegraphConfig:
    """The config a worker opens its own clients from: the driver's endpoints, launched ones attached at the
    addresses the driver launched them on, and the roles as bound right now (adapters handed off included)."""
    config: RolegraphConfig = pool.config
    endpoints = {}
    for name in pool.clients:
        endpoint = config.endpoints[name]
        if endpoint.launch is not None:
            urls = [handle.base_url for handle in pool.replica_servers[name]]
            endpoint = endpoint.model_copy(
                update={"launch": None, "base_url": urls[0] if len(urls) == 1 else urls}
            )
        endpoints[name] = endpoint
    return config.model_copy(update={"endpoints": endpoints, "roles": dict(pool.bindings)})


def rotate_replicas(config: RolegraphConfig, turn: int) -> RolegraphConfig:
    """`config` with every replica list rotated by `turn`: worker `turn`'s router then prefers its own
    replica among equally idle ones. Each worker balances only its own calls, so with the same list every
    worker would send its first episodes to the same replica, in step with the others."""
    endpoints = {}
    for name, endpoint in config.endpoints.items():
        urls = endpoint.replica_urls
        if len(urls) > 1:
            shift = turn % len(urls)
            endpoint = endpoint.model_copy(update={"base_url": urls[shift:] + urls[:shift]})
        endpoints[name] = endpoint
    return config.model_copy(update={"endpoints": endpoints})


@dataclasses.dataclass(frozen=True)
class EpisodeResult:
    """How one episode ended on a worker, and the worker's completion tokens so far (for tok/s)."""

    key: str
    outcome: str
    completion_tokens: int


class EpisodeWorker:
    """The actor (see `start_worker`): one runtime over the remote store, fed episodes by the driver."""

    def __init__(
        self, ref: GraphRef, config: RolegraphConfig, writer: Any, run_dir: str, prompts_dir: str | None
    ) -> None:
        self.ref = ref
        self.config = config
        self.writer = writer
        self.run_dir = Path(run_dir)
        self.prompts_dir = Path(prompts_dir) if prompts_dir else None
        self._stack = AsyncExitStack()
        self._runner: Any = None

    async def ready(self) -> str:
        """Open the endpoints and compile the graph; returns this worker's node id."""
        import ray

        from rolegraph.cluster.checkpointer import RemoteCheckpointer
        from rolegraph.cluster.store_writer import RemoteStore
        from rolegraph.graphs.role_calls import RuntimeContext
        from rolegraph.graphs.runtime import make_runner
        from rolegraph.serving import EndpointPool

        if self._runner is None:
            graph = self.ref.load()
            pool = await self._stack.enter_async_context(EndpointPool(self.config))
            store = RemoteStore(self.writer, self.run_dir).as_store()
            roles = getattr(graph, "role_defs", None)
            ctx = RuntimeContext(pool, store, roles=roles, prompts_dir=self.prompts_dir)
            checkpointer = RemoteCheckpointer(self.writer, before_write=store.aflush)
            self._runner = make_runner(graph, ctx, store, checkpointer)
        return str(ray.get_runtime_context().get_node_id())

    async def episode(self, item: EpisodeInput) -> EpisodeResult:
        outcome = await self._runner.episode(item)
        return EpisodeResult(item.key, outcome, self._runner.ctx.stats.completion_tokens)

    async def close(self) -> None:
        await self._stack.aclose()


def start_worker(
    ref: GraphRef,
    config: RolegraphConfig,
    writer: Any,
    run_dir: Path,
    prompts_dir: Path | None,
    *,
    node_id: str,
    concurrency: int,
) -> Any:
    """Start one worker actor on `node_id` (Ray's soft affinity does not spread them; if the node is gone, the
    actor dies and the driver starts another on a node that is alive)."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    actor = ray.remote(EpisodeWorker).options(
        num_cpus=0,  # a worker waits on endpoints and sandboxes; Ray's CPUs stay for sandbox actors
        max_restarts=0,  # the driver replaces a dead worker and resumes its episodes itself
        max_concurrency=concurrency + 2,
        scheduling_strategy=NodeAffinitySchedulingStrategy(node_id, soft=False),
    )
    return actor.remote(
        ref, config, writer, str(run_dir.resolve()), str(prompts_dir) if prompts_dir else None
    )
