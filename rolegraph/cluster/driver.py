"""`run_on_ray`: the runtime's run, with its episodes spread over Ray actor workers and one store writer.

The driver (the command's process) holds the run-directory lock, opens the endpoints, runs the graph's
`prepare`, and hands episodes to the workers, each no more than its share of `--concurrency` at a time (a
worker that finishes one gets the next, so balance is automatic). A worker or node that dies is replaced;
its unfinished episodes go to another worker and resume from their checkpoints. Progress and the summary are
the ones a single machine shows.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import math
import time
from collections import deque
from collections.abc import Sequence
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape

from rolegraph.cluster.connect import alive_nodes, connect, driver_node, remote_error
from rolegraph.cluster.settings import ClusterError, ClusterSettings
from rolegraph.cluster.store_writer import RemoteStore, start_writer
from rolegraph.cluster.workers import (
    EpisodeResult,
    GraphRef,
    graph_ref,
    rotate_replicas,
    start_worker,
    uses_sandbox,
    worker_config,
)
from rolegraph.config import RolegraphConfig
from rolegraph.graphs.base import EpisodeInput, GraphDef, RunParams
from rolegraph.graphs.role_calls import RolePool, RunStats
from rolegraph.graphs.runtime import RunSummary, _fields, _progress, open_run, refuse_damaged_checkpoints
from rolegraph.terminal import escape_controls

CLOSE_TIMEOUT_S = 10.0
START_TRIES = 3
TICK_S = 0.5


async def run_on_ray(
    cluster: ClusterSettings,
    graph: GraphDef,
    config_or_pool: RolegraphConfig | RolePool,
    params: RunParams,
    run_dir: Path,
    concurrency: int,
    console: Console,
    progress: bool,
    prompts_dir: Path | None,
) -> RunSummary:
    """Run (or resume) the graph's episodes on the cluster; the caller holds the run directory's lock."""
    params = dataclasses.replace(params, run_dir=run_dir)
    if not isinstance(config_or_pool, RolegraphConfig) and not (
        hasattr(config_or_pool, "clients") and hasattr(config_or_pool, "bindings")
    ):
        raise ClusterError(
            f"a {type(config_or_pool).__name__} cannot be shared with Ray workers",
            "pass a config or an EndpointPool to run_graph when running with --ray",
        )
    started = time.monotonic()
    refuse_damaged_checkpoints(run_dir)
    connect(cluster.address)
    writer = start_writer(run_dir, driver_node())
    remote = RemoteStore(writer, run_dir)
    store = remote.as_store()
    try:
        stats = RunStats()
        async with (
            open_run(graph, config_or_pool, params, run_dir, store, concurrency, stats, prompts_dir) as run,
            AsyncExitStack() as stack,
        ):
            ref = graph_ref(graph)
            if run.todo and ref.spec_path is not None and uses_sandbox(graph):
                ref = dataclasses.replace(ref, sandbox=_start_sandboxes(graph))
                stack.callback(ref.sandbox.close)
            fleet = _Fleet(ref, worker_config(run.pool), writer, run_dir, prompts_dir, cluster, concurrency)
            try:
                await _spread(fleet, remote, graph.name, run.todo, run.total, stats, console, progress)
            finally:
                await fleet.close()
        return RunSummary.from_store(
            store, elapsed_s=time.monotonic() - started, tokens_per_s=stats.tokens_per_s
        )
    finally:
        remote.close()
        _kill(writer)


def _start_sandboxes(graph: GraphDef) -> Any:
    """Sandbox actors on the nodes that can run the spec's backend (see environments/sandbox/ray_pool.py)."""
    from rolegraph.environments.sandbox.ray_pool import start_sandbox_actors

    spec = getattr(graph, "spec", None)
    assert spec is not None
    return start_sandbox_actors(spec.sandbox.backend, width=spec.sandbox.size)


def _kill(handle: Any) -> None:
    import ray

    with contextlib.suppress(Exception):
        ray.kill(handle, no_restart=True)


@dataclasses.dataclass
class _Worker:
    handle: Any
    running: dict[asyncio.Future[Any], EpisodeInput] = dataclasses.field(default_factory=dict)
    completion_tokens: int = 0


class _Fleet:
    """The episode workers: started one per alive node (or `--ray-workers`), replaced when they die."""

    def __init__(
        self,
        ref: GraphRef,
        config: RolegraphConfig,
        writer: Any,
        run_dir: Path,
        prompts_dir: Path | None,
        cluster: ClusterSettings,
        concurrency: int,
    ) -> None:
        self.ref, self.config, self.writer = ref, config, writer
        self.run_dir, self.prompts_dir = run_dir, prompts_dir
        self.size = cluster.workers or len(alive_nodes())
        self.per_worker = max(1, math.ceil(concurrency / self.size))
        self.workers: list[_Worker] = []
        self.started = 0
        self.retired_tokens = 0
        self.replaced = 0

    async def start(self, count: int) -> None:
        """Start `count` workers spread over the alive nodes; a node that dies meanwhile is skipped."""
        import ray

        for _ in range(START_TRIES):
            try:
                return await self._start(count)
            except ray.exceptions.RayActorError:
                continue
        raise ClusterError(
            f"no episode worker could start on the cluster in {START_TRIES} tries",
            "check the nodes with `ray status`; re-run the same command to resume",
        )

    async def _start(self, count: int) -> None:
        nodes = alive_nodes()
        turns = range(self.started, self.started + count)
        self.started += count
        fresh = [
            _Worker(
                start_worker(
                    self.ref,
                    rotate_replicas(self.config, turn),
                    self.writer,
                    self.run_dir,
                    self.prompts_dir,
                    node_id=nodes[(len(self.workers) + i) % len(nodes)],
                    concurrency=self.per_worker,
                )
            )
            for i, turn in enumerate(turns)
        ]
        try:
            await asyncio.gather(*(_awaitable(w.handle.ready.remote()) for w in fresh))
        except Exception as exc:
            for worker in fresh:
                _kill(worker.handle)
            raise remote_error(exc) from None
        self.workers.extend(fresh)
        return None

    async def replace(self, dead: _Worker) -> None:
        """Drop a dead worker and start another (on a node that is alive)."""
        self.workers.remove(dead)
        self.retired_tokens += dead.completion_tokens
        _kill(dead.handle)
        self.replaced += 1
        if self.replaced > 2 * self.size + 2:
            raise ClusterError(
                f"{self.replaced} episode workers died in this run",
                "check the nodes with `ray status`; re-run the same command to resume",
            )
        await self.start(1)

    @property
    def completion_tokens(self) -> int:
        return self.retired_tokens + sum(w.completion_tokens for w in self.workers)

    async def close(self) -> None:
        workers, self.workers = self.workers, []
        if workers:
            with contextlib.suppress(Exception, asyncio.TimeoutError):
                await asyncio.wait_for(
                    asyncio.gather(
                        *(_awaitable(w.handle.close.remote()) for w in workers), return_exceptions=True
                    ),
                    CLOSE_TIMEOUT_S,
                )
        for worker in workers:
            _kill(worker.handle)


def _awaitable(ref: Any) -> asyncio.Future[Any]:
    return asyncio.wrap_future(ref.future())


async def _spread(
    fleet: _Fleet,
    store: RemoteStore,
    graph_name: str,
    todo: Sequence[EpisodeInput],
    total: int,
    stats: RunStats,
    console: Console,
    show: bool,
) -> None:
    """Hand every episode of `todo` to a worker, with the progress bar a single machine shows."""
    import ray

    bar = _progress(console)
    task = bar.add_task(
        escape(escape_controls(graph_name, one_line=True)),
        total=total,
        completed=stats.skipped,
        **_fields(stats),
    )
    queue = deque(todo)
    if show:
        bar.start()
    try:
        if queue:
            await fleet.start(fleet.size)
        while queue or any(w.running for w in fleet.workers):
            for worker in sorted(fleet.workers, key=lambda w: len(w.running)):
                while queue and len(worker.running) < fleet.per_worker:
                    item = queue.popleft()
                    worker.running[_awaitable(worker.handle.episode.remote(item))] = item
            running = {future: worker for worker in fleet.workers for future in worker.running}
            done, _ = await asyncio.wait(running, timeout=TICK_S, return_when=asyncio.FIRST_COMPLETED)
            dead: list[_Worker] = []
            for future in done:
                worker = running[future]
                item = worker.running.pop(future)
                try:
                    result: EpisodeResult = future.result()
                except ray.exceptions.RayActorError:
                    if worker not in dead:
                        dead.append(worker)
                    queue.appendleft(item)
                    continue
                except ray.exceptions.RayTaskError as exc:
                    raise remote_error(exc) from None
                worker.completion_tokens = max(worker.completion_tokens, result.completion_tokens)
                _count(stats, result.outcome)
                bar.update(task, advance=1)
            for worker in dead:
                queue.extendleft(worker.running.values())  # its other episodes die with it
                worker.running.clear()
                await fleet.replace(worker)
            if dead:
                _settle(queue, store, stats, bar, task)
            stats.completion_tokens = fleet.completion_tokens
            bar.update(task, **_fields(stats))
    finally:
        bar.update(task, **_fields(stats))
        if show:
            bar.stop()


def _settle(queue: deque[EpisodeInput], store: RemoteStore, stats: RunStats, bar: Any, task: Any) -> None:
    """Drop from `queue` the episodes a dead worker ended before it could say so (they are not run twice)."""
    statuses = store.statuses([item.key for item in queue])
    # A failed episode is retried, as a re-run would retry it; a finished one is never run twice.
    ended = {key: status for key, status in statuses.items() if status in ("kept", "finished")}
    if not ended:
        return
    kept = [item for item in queue if item.key not in ended]
    queue.clear()
    queue.extend(kept)
    for status in ended.values():
        _count(stats, "kept" if status == "kept" else "rejected")
        bar.update(task, advance=1)


def _count(stats: RunStats, outcome: str) -> None:
    if outcome == "kept":
        stats.kept += 1
    elif outcome == "rejected":
        stats.rejected += 1
    else:
        stats.failed += 1
