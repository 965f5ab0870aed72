"""Runs any GraphDef: many episodes at once, every call recorded in the store, resumable after a crash.

Each episode is a LangGraph thread (thread_id = episode id) whose state is checkpointed after every node in
`RUN_DIR/checkpoints.sqlite`. Re-running a run directory skips finished episodes and continues unfinished ones
from their last completed node. Every step records the LangGraph task it ran in; on resume, steps of earlier
attempts whose task never completed (by the checkpoints alone) are flagged `superseded`, so readers skip them.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import signal
import threading
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import AsyncExitStack, asynccontextmanager, contextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from rolegraph.cluster import active as active_cluster
from rolegraph.config import RoleBinding, RolegraphConfig
from rolegraph.errors import ModelNotFoundError, RolegraphError, failure_kind
from rolegraph.graphs.base import EpisodeInput, GraphDef, Outcome, RunParams
from rolegraph.graphs.checkpointing import steps_first_saver
from rolegraph.graphs.role_calls import RolePool, RunStats, RuntimeContext
from rolegraph.serving.routing import current_episode
from rolegraph.store import Store
from rolegraph.store.check import CHECKPOINT_FILE
from rolegraph.store.db import DiskFullError, damage, disk_full
from rolegraph.store.lock import RunDirInUseError, RunLock
from rolegraph.terminal import escape_controls, safe, safe_console

PREPARE_FILE = "prepare.json"
PREPARE_EPISODE = "__prepare__"
"""Pseudo-episode id under which a graph's run-level `prepare` calls are recorded."""
ABORT_AFTER_ENDPOINT_FAILURES = 3
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class RunInterruptedError(RolegraphError):
    """The run was stopped by SIGTERM or SIGINT; what finished is kept and a re-run resumes."""

    def __init__(self, signum: int, run_dir: Path) -> None:
        super().__init__(
            f"{signal.Signals(signum).name} stopped the run in {run_dir}",
            "re-run the same command to resume it",
        )
        self.signum = signum


# --- summary ----------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class RunSummary:
    """What a run produced, read back from its store."""

    run_dir: Path
    graph: str
    episodes: int
    kept: int
    rejected: int
    failed: int
    running: int
    usage: dict[str, dict[str, int]]
    reasons: dict[str, int]
    failures: dict[str, int] = dataclasses.field(default_factory=dict)
    """Failed episodes by failure kind."""
    no_reward: dict[str, int] = dataclasses.field(default_factory=dict)
    """Finished episodes whose reward is None (the infrastructure could not compute it), by reward name."""
    elapsed_s: float = 0.0
    tokens_per_s: float = 0.0

    @property
    def finished(self) -> int:
        return self.kept + self.rejected

    @property
    def acceptance_rate(self) -> float:
        return self.kept / self.finished if self.finished else 0.0

    @classmethod
    def from_store(cls, store: Store, *, elapsed_s: float = 0.0, tokens_per_s: float = 0.0) -> RunSummary:
        run = store.run()
        counts = store.counts()
        return cls(
            run_dir=store.run_dir,
            graph=run.graph if run else "?",
            episodes=sum(counts[s] for s in ("running", "finished", "failed")),
            kept=counts["kept"],
            rejected=counts["rejected"],
            failed=counts["failed"],
            running=counts["running"],
            usage=store.usage_by_role(),
            reasons=store.rejection_reasons(),
            failures=store.failures_by_kind(),
            no_reward=store.missing_rewards(),
            elapsed_s=elapsed_s,
            tokens_per_s=tokens_per_s,
        )

    def render(self, console: Console) -> None:
        """Print the summary; names and reasons come from run records, so they are printed as safe text."""
        head = Text.assemble(
            safe(self.graph, "bold"),
            " in ",
            safe(self.run_dir),
            f": {self.finished}/{self.episodes} episodes finished, ",
            (f"{self.kept} kept", "green"),
            ", ",
            (f"{self.rejected} rejected", "yellow"),
            (f", {self.failed} failed", "red") if self.failed else "",
            f", {self.running} unfinished" if self.running else "",
            f"; acceptance {self.acceptance_rate:.0%}",
        )
        if self.elapsed_s:
            head.append(f"; {self.elapsed_s:.1f} s, {self.tokens_per_s:.1f} tok/s")
        console.print(head)
        usage = Table(title="tokens per role", title_justify="left")
        for column in ("role", "calls", "prompt tokens", "completion tokens"):
            usage.add_column(column, justify="left" if column == "role" else "right")
        for role, u in self.usage.items():
            usage.add_row(safe(role), str(u["calls"]), str(u["prompt_tokens"]), str(u["completion_tokens"]))
        console.print(usage)
        if self.failures:
            kinds = ", ".join(f"{kind} {count}" for kind, count in self.failures.items())
            console.print(safe(f"failed episodes by kind: {kinds} (re-run the same --run-dir to retry them)"))
        if self.no_reward:
            names = ", ".join(f"{name} {count}" for name, count in self.no_reward.items())
            console.print(
                safe(f"rewards the infrastructure could not compute (left out of training): {names}")
            )
        if self.reasons:
            reasons = Table(title="rejection reasons", title_justify="left")
            reasons.add_column("reason")
            reasons.add_column("episodes", justify="right")
            for reason, count in self.reasons.items():
                reasons.add_row(safe(reason), str(count))
            console.print(reasons)
        console.print(safe(f"data: {self.run_dir / 'store.sqlite'}"))
        console.print(
            safe(f"export: rolegraph export {self.run_dir} --format sft --out {self.run_dir / 'sft.jsonl'}")
        )


# --- running ----------------------------------------------------------------------------------------------
def bind_missing_roles(config: RolegraphConfig, roles: tuple[str, ...]) -> RolegraphConfig:
    """Bind roles the config does not name (e.g. a spec's new roles) to the first endpoint's base model."""
    missing = [r for r in roles if r not in config.roles]
    if not missing:
        return config
    endpoint = next(iter(config.endpoints))
    bound = dict(config.roles)
    for role in missing:
        bound[role] = RoleBinding(endpoint=endpoint)
    return config.model_copy(update={"roles": bound})


class _Runner:
    def __init__(
        self,
        graph: GraphDef,
        ctx: RuntimeContext,
        compiled: Any,
        store: Store,
        recursion_limit: int,
    ) -> None:
        self.graph = graph
        self.ctx = ctx
        self.compiled = compiled
        self.store = store
        self.recursion_limit = recursion_limit
        self.endpoint_failures = 0

    async def _endpoint_failure(self, key: str) -> None:
        """Retry later: judging an episode whose calls never reached a model would be a false rejection."""
        error = self.ctx.endpoint_errors[key]
        await self.compiled.checkpointer.adelete_thread(key)
        self.store.fail_episode(key, f"endpoint error: {error.message}", error.kind.value)
        self.ctx.stats.failed += 1
        self.endpoint_failures += 1
        if (
            self.endpoint_failures >= ABORT_AFTER_ENDPOINT_FAILURES
            and self.ctx.stats.kept + self.ctx.stats.rejected == 0
        ):
            raise type(error)(
                f"{self.endpoint_failures} episodes failed on endpoint errors: {error.message}",
                "check the endpoints with `rolegraph endpoints status`; re-run the same --run-dir to resume",
            )

    async def _completed_tasks(self, config: dict[str, Any]) -> set[str]:
        """Ids of the episode's LangGraph tasks that completed (their writes are in the checkpoints)."""
        history = [snapshot async for snapshot in self.compiled.aget_state_history(config)]
        pending = {t.id for t in history[0].tasks if t.result is None} if history else set()
        return {t.id for snapshot in history for t in snapshot.tasks} - pending

    async def episode(self, item: EpisodeInput) -> str:
        """Run (or resume) one episode into the store; returns how it ended: kept, rejected or failed."""
        key = item.key
        current_episode.set(key)  # this task's context: every call the episode makes routes by it
        attempt = self.store.begin_episode(key, item.state)
        self.ctx.attempts[key] = attempt
        self.ctx.endpoint_errors.pop(key, None)
        config: dict[str, Any] = {"configurable": {"thread_id": key}, "recursion_limit": self.recursion_limit}
        try:
            snapshot = await self.compiled.aget_state(config)
            if attempt > 1:
                completed = await self._completed_tasks(config) if snapshot.values else None
                self.store.supersede_interrupted(key, attempt, completed)
            if attempt > 1 and snapshot.values:
                # A task whose writes were saved but whose super-step never checkpointed is not in `next`:
                # invoking applies its writes and goes on, where returning the snapshot would end the episode
                # half-done.
                pending = snapshot.next or snapshot.tasks
                final = await self.compiled.ainvoke(None, config) if pending else snapshot.values
            else:
                final = await self.compiled.ainvoke({**item.state, "episode_id": key}, config)
        except (ModelNotFoundError, asyncio.CancelledError):
            raise
        except Exception as exc:
            if disk_full(exc):  # stop the run: recording this episode as failed would fail (or lie) too
                raise exc if isinstance(exc, DiskFullError) else DiskFullError(self.store.run_dir) from None
            await self.store.aflush()  # the episode's queued steps go before how it ended
            if key in self.ctx.endpoint_errors:  # the node failed because a call never reached a model
                await self._endpoint_failure(key)
                return "failed"
            message = exc.message if isinstance(exc, RolegraphError) else f"{type(exc).__name__}: {exc}"
            self.store.fail_episode(key, message, failure_kind(exc).value)
            self.ctx.stats.failed += 1
            return "failed"
        await self.store.aflush()
        if key in self.ctx.endpoint_errors:
            await self._endpoint_failure(key)
            return "failed"
        result: Outcome = self.graph.outcome(dict(final))
        self.store.finish_episode(
            key,
            dict(final),
            kept=result.kept,
            reason=result.reason,
            rewards=dict(result.rewards),
            metrics=dict(result.metrics),
        )
        if result.kept:
            self.ctx.stats.kept += 1
            return "kept"
        self.ctx.stats.rejected += 1
        return "rejected"


def make_runner(graph: GraphDef, ctx: RuntimeContext, store: Store, checkpointer: Any) -> _Runner:
    """The graph compiled with `checkpointer`, ready to run episodes (on this machine or a Ray worker)."""
    compiled = graph.build(ctx).compile(checkpointer=checkpointer)
    spec = getattr(graph, "spec", None)
    limit = 25
    if spec is not None:
        from rolegraph.graphs.spec import recursion_limit

        limit = recursion_limit(spec)
    return _Runner(graph, ctx, compiled, store, max(limit, 50))


def _progress(console: Console) -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("episodes"),
        TextColumn("[cyan]{task.fields[tps]:.1f} tok/s"),
        TextColumn("[green]{task.fields[kept]} kept"),
        TextColumn("[yellow]{task.fields[rejected]} rejected"),
        TextColumn("[red]{task.fields[failed]} failed"),
        TimeElapsedColumn(),
        console=console,
        transient=False,
    )


async def _prepare(graph: GraphDef, ctx: RuntimeContext, params: RunParams, run_dir: Path) -> RunParams:
    """Run the graph's `prepare` once per run directory; its options are kept for resumed runs."""
    if graph.prepare is None:
        return params
    cache = run_dir / PREPARE_FILE
    if cache.is_file():
        options = json.loads(cache.read_text())
    else:
        options = await graph.prepare(ctx, params)
        tmp = cache.with_suffix(".tmp")
        tmp.write_text(json.dumps(options, default=str))
        tmp.replace(cache)
    return dataclasses.replace(params, options={**params.options, **options})


async def run_graph(
    graph: GraphDef,
    config_or_pool: RolegraphConfig | RolePool,
    params: RunParams,
    run_dir: Path | str,
    *,
    concurrency: int = 8,
    console: Console | None = None,
    progress: bool = True,
    prompts_dir: Path | None = None,
    wait: bool = False,
) -> RunSummary:
    """Run (or resume) `params.n` episodes of `graph` into `run_dir` and return the summary.

    `config_or_pool` is a config (the endpoints are launched or attached for the run and released after) or an
    already open pool, e.g. `rolegraph.serving.EndpointPool` (or a fake with `resolve(role)` in unit tests).
    The run holds `run_dir`'s writer lock throughout: another writer is refused (RunDirInUseError), or with
    `wait` waited for. SIGTERM and SIGINT stop it cleanly (RunInterruptedError): launched servers are stopped
    and a re-run resumes.
    """
    if concurrency < 1:
        raise RolegraphError(
            f"concurrency must be at least 1, got {concurrency}", "pass --concurrency 1 or more"
        )
    run_dir = Path(run_dir)
    console = console or safe_console(stderr=True)
    with stop_on_signals(run_dir):
        try:
            return await _locked_run(
                graph, config_or_pool, params, run_dir, concurrency, console, progress, prompts_dir, wait
            )
        except Exception as exc:
            if disk_full(exc) and not isinstance(exc, DiskFullError):
                raise DiskFullError(run_dir) from None
            raise


async def _locked_run(
    graph: GraphDef,
    config_or_pool: RolegraphConfig | RolePool,
    params: RunParams,
    run_dir: Path,
    concurrency: int,
    console: Console,
    progress: bool,
    prompts_dir: Path | None,
    wait: bool,
) -> RunSummary:
    def waiting(held: RunDirInUseError) -> None:
        console.print(safe(f"{held.message}; waiting for it (--wait)"))

    lock = await RunLock(run_dir).acquire_async(wait=wait, on_wait=waiting)
    try:
        cluster = active_cluster()
        if cluster is not None:  # the same run, its episodes spread over Ray workers (see rolegraph.cluster)
            from rolegraph.cluster.driver import run_on_ray

            return await run_on_ray(
                cluster, graph, config_or_pool, params, run_dir, concurrency, console, progress, prompts_dir
            )
        return await _run(graph, config_or_pool, params, run_dir, concurrency, console, progress, prompts_dir)
    finally:
        lock.release()


def refuse_damaged_checkpoints(run_dir: Path) -> Path:
    """The run's checkpoints file, unless it is damaged (then it is left as it is and the run refused)."""
    checkpoints = run_dir / CHECKPOINT_FILE
    problem = damage(checkpoints) if checkpoints.is_file() else None
    if problem is not None:
        raise RolegraphError(
            f"the checkpoints {checkpoints} are damaged: {problem}",
            "restore them from a copy, or start a new --run-dir (rolegraph leaves this file as it is)",
        )
    return checkpoints


@dataclasses.dataclass
class OpenRun:
    """A run with its endpoints open and its inputs known: what is left to do is running `todo`."""

    pool: RolePool
    ctx: RuntimeContext
    todo: list[EpisodeInput]
    total: int


@asynccontextmanager
async def open_run(
    graph: GraphDef,
    config_or_pool: RolegraphConfig | RolePool,
    params: RunParams,
    run_dir: Path,
    store: Store,
    concurrency: int,
    stats: RunStats,
    prompts_dir: Path | None,
) -> AsyncIterator[OpenRun]:
    """Record the run's start, open its endpoints (from a config) and run the graph's `prepare`; yields the
    episodes not finished yet. Shared by the run on this machine and the run on Ray (rolegraph.cluster)."""
    config = config_or_pool if isinstance(config_or_pool, RolegraphConfig) else None
    if config is not None:
        config = bind_missing_roles(config, graph.roles)
    store.start_run(
        graph.name,
        config.model_dump(mode="json") if config is not None else {},
        params.seed,
        {"n": params.n, "options": params.options, "concurrency": concurrency},
        [dataclasses.asdict(reward) for reward in graph.rewards],
    )
    async with AsyncExitStack() as stack:
        if config is not None:
            from rolegraph.serving import EndpointPool

            pool: RolePool = await stack.enter_async_context(EndpointPool(config))
        else:
            pool = config_or_pool  # type: ignore[assignment]
        ctx = RuntimeContext(
            pool, store, roles=getattr(graph, "role_defs", None), prompts_dir=prompts_dir, stats=stats
        )
        params = await _prepare(graph, ctx, params, run_dir)
        inputs = graph.inputs(params)
        _check_unique(inputs, graph.name)
        finished = store.finished_ids()
        todo = [item for item in inputs if item.key not in finished]
        stats.skipped = len(inputs) - len(todo)
        yield OpenRun(pool, ctx, todo, len(inputs))


async def _run(
    graph: GraphDef,
    config_or_pool: RolegraphConfig | RolePool,
    params: RunParams,
    run_dir: Path,
    concurrency: int,
    console: Console,
    progress: bool,
    prompts_dir: Path | None,
) -> RunSummary:
    params = dataclasses.replace(params, run_dir=run_dir)
    started = time.monotonic()
    checkpoints = refuse_damaged_checkpoints(run_dir)
    store = Store(run_dir)
    try:
        stats = RunStats()
        async with (
            open_run(graph, config_or_pool, params, run_dir, store, concurrency, stats, prompts_dir) as run,
            steps_first_saver(str(checkpoints), store.aflush) as saver,
        ):
            runner = make_runner(graph, run.ctx, store, saver)
            await _run_all(runner, run.todo, run.total, stats, concurrency, console, progress)
        return RunSummary.from_store(
            store, elapsed_s=time.monotonic() - started, tokens_per_s=stats.tokens_per_s
        )
    finally:
        store.close()


_RECEIVED: ContextVar[list[int] | None] = ContextVar("rolegraph_stop_signals", default=None)
"""The signals received by the active `stop_on_signals` scope (None outside one)."""


@contextmanager
def stop_on_signals(run_dir: Path | str) -> Iterator[None]:
    """Inside, the first SIGTERM or SIGINT cancels the current task, which unwinds cleanly (servers the
    command launched are stopped) and surfaces as RunInterruptedError; a second signal acts as it would
    outside (Ctrl-C twice). Scopes nest (a command around several runs): the outermost owns the handlers.
    Signals reach only the main thread, so elsewhere this does nothing."""
    task = asyncio.current_task()
    outer = _RECEIVED.get()
    owner = outer is None and task is not None and threading.current_thread() is threading.main_thread()
    received: list[int] = [] if outer is None else outer
    loop = asyncio.get_running_loop()
    previous = {sig: signal.getsignal(sig) for sig in STOP_SIGNALS}

    def restore() -> None:
        for sig, handler in previous.items():
            loop.remove_signal_handler(sig)
            if handler is not None:
                signal.signal(sig, handler)

    def on_signal(sig: int) -> None:
        received.append(sig)
        if len(received) == 1 and task is not None:
            task.cancel()
        restore()

    if owner:
        for sig in STOP_SIGNALS:
            loop.add_signal_handler(sig, on_signal, sig)
    token = _RECEIVED.set(received)
    try:
        yield
    except asyncio.CancelledError:
        if not received or task is None:
            raise
        task.uncancel()
        raise RunInterruptedError(received[0], Path(run_dir)) from None
    finally:
        _RECEIVED.reset(token)
        if owner:
            restore()


def _check_unique(inputs: list[EpisodeInput], graph: str) -> None:
    seen: set[str] = set()
    for item in inputs:
        if item.key in seen:
            raise RolegraphError(
                f"graph '{graph}' gave two episodes the key '{item.key}'", "keys must be unique"
            )
        seen.add(item.key)


async def _run_all(
    runner: _Runner,
    todo: list[EpisodeInput],
    total: int,
    stats: RunStats,
    concurrency: int,
    console: Console,
    show: bool,
) -> None:
    semaphore = asyncio.Semaphore(concurrency)
    bar = _progress(console)
    name = escape(escape_controls(runner.graph.name, one_line=True))
    task = bar.add_task(name, total=total, completed=stats.skipped, **_fields(stats))

    async def one(item: EpisodeInput) -> None:
        async with semaphore:
            await runner.episode(item)
        bar.update(task, advance=1, **_fields(stats))

    async def tick() -> None:
        while True:
            await asyncio.sleep(0.5)
            bar.update(task, **_fields(stats))

    if show:
        bar.start()
    ticker = asyncio.create_task(tick())
    try:
        async with asyncio.TaskGroup() as group:
            for item in todo:
                group.create_task(one(item))
    except BaseExceptionGroup as group:
        first = next((e for e in group.exceptions if isinstance(e, RolegraphError)), None)
        if first is None:
            raise
        raise first from None
    finally:
        ticker.cancel()
        bar.update(task, **_fields(stats))
        if show:
            bar.stop()


def _fields(stats: RunStats) -> dict[str, Any]:
    return {"tps": stats.tokens_per_s, "kept": stats.kept, "rejected": stats.rejected, "failed": stats.failed}
