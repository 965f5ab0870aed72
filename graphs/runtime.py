"""Runs any GraphDef: many episodes at once, every call recorded in the store, resumable after a crash.

Each episode is a LangGraph thread (thread_id = episode id) whose state is checkpointed after every node in
`RUN_DIR/checkpoints.sqlite`. Re-running a run directory skips finished episodes and continues unfinished ones
from their last completed node. Steps of a node that was interrupted are flagged `superseded` in the store.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping
from contextlib import AsyncExitStack
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol, TypeVar

from langgraph.checkpoint.sqlite.aio import AsyncSqliteSaver
from pydantic import BaseModel
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from rolegraph.agents.role import Role
from rolegraph.config import RoleBinding, RolegraphConfig, SamplingParams
from rolegraph.errors import EndpointError, ModelNotFoundError, ParseError, RolegraphError
from rolegraph.graphs.base import EpisodeInput, GraphDef, Outcome, RunParams
from rolegraph.graphs.context import RoleCall
from rolegraph.serving.types import CallResult
from rolegraph.store import ChoiceRecord, Store

T = TypeVar("T")
CHECKPOINT_FILE = "checkpoints.sqlite"
PREPARE_FILE = "prepare.json"
PREPARE_EPISODE = "__prepare__"
"""Pseudo-episode id under which a graph's run-level `prepare` calls are recorded."""
ABORT_AFTER_ENDPOINT_FAILURES = 3


class ChatClient(Protocol):
    async def chat(
        self, messages: list[dict[str, Any]], *, model: str, sampling: SamplingParams
    ) -> CallResult: ...


class RolePool(Protocol):
    """What the runtime needs of rolegraph.serving.EndpointPool (fakes implement it in unit tests)."""

    def resolve(self, role: str) -> tuple[Any, str, SamplingParams]: ...


@dataclasses.dataclass
class RunStats:
    """Live counters for the progress bar and the summary."""

    kept: int = 0
    rejected: int = 0
    failed: int = 0
    skipped: int = 0
    completion_tokens: int = 0
    started: float = dataclasses.field(default_factory=time.monotonic)

    @property
    def tokens_per_s(self) -> float:
        return self.completion_tokens / max(time.monotonic() - self.started, 1e-6)


# --- the concrete GraphContext ----------------------------------------------------------------------------
def _sampling_for(role: Role, binding: SamplingParams, overrides: dict[str, Any]) -> SamplingParams:
    """Role defaults, then what the config binding sets explicitly, then the call's overrides."""
    known = set(SamplingParams.model_fields)
    layers = [role.sampling, binding.model_dump(include=binding.model_fields_set), overrides]
    merged: dict[str, Any] = {}
    extra: dict[str, Any] = {}
    for layer in layers:
        for key, value in layer.items():
            if key == "extra":
                extra.update(value or {})
            elif key in known:
                merged[key] = value
            else:
                extra[key] = value
    return SamplingParams(**merged, extra=extra)


def _jsonable(value: Any) -> Any:
    """Environment results as JSON-friendly data (dataclasses and pydantic models included)."""
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    try:
        json.dumps(value)
        return value
    except (TypeError, ValueError):
        return repr(value)


class RuntimeContext:
    """The GraphContext nodes get: role and environment calls through the pool, each recorded as a step."""

    def __init__(
        self,
        pool: RolePool,
        store: Store,
        *,
        roles: Mapping[str, Role] | None = None,
        prompts_dir: Path | None = None,
        stats: RunStats | None = None,
    ) -> None:
        self.pool = pool
        self.store = store
        self.roles = dict(roles or {})
        self.prompts_dir = prompts_dir
        self.stats = stats or RunStats()
        self.attempts: dict[str, int] = {}
        self.endpoint_errors: dict[str, str] = {}
        """Episode id → the last endpoint error of its current attempt; such episodes are retried."""
        self.last_step: dict[tuple[str, str], int] = {}
        """(episode id, node) → id of the last step recorded there (for `reward`)."""

    def role(self, name: str) -> Role:
        if name in self.roles:
            return self.roles[name]
        from rolegraph.agents.registry import get_role

        role = get_role(name, self.prompts_dir)
        self.roles[name] = role
        return role

    def _attempt(self, episode_id: str) -> int:
        # Calls outside a started episode (a graph's prepare) are recorded as attempt 1 with no episode row.
        return self.attempts.get(episode_id, 1)

    async def call_role(
        self, role: str, *, node: str, episode_id: str, variables: dict[str, Any], **sampling: Any
    ) -> RoleCall:
        spec = self.role(role)
        messages = spec.render(variables)
        client, model, binding = self.pool.resolve(role)
        params = _sampling_for(spec, binding, sampling)
        attempt = self._attempt(episode_id)
        started_at = time.time()
        result: CallResult | None = None
        error: str | None = None
        try:
            result = await client.chat(messages, model=model, sampling=params)
        except ModelNotFoundError:
            raise  # a wrong binding fails every call: stop the run with its message
        except EndpointError as exc:
            error = str(exc)
            self.endpoint_errors[episode_id] = error
        parsed: list[dict[str, Any] | None] = []
        errors: list[str | None] = []
        for choice in result.choices if result else []:
            try:
                parsed.append(spec.parse(choice.text))
                errors.append(None)
            except ParseError as exc:
                parsed.append(None)
                errors.append(exc.message)
        choices = [
            ChoiceRecord(
                text=c.text,
                finish_reason=c.finish_reason,
                token_ids=c.token_ids,
                logprobs=c.logprobs,
                parsed=p,
                parse_error=e,
            )
            for c, p, e in zip(result.choices if result else [], parsed, errors, strict=True)
        ]
        step_id = self.store.record_step(
            episode_id=episode_id,
            attempt=attempt,
            kind="role",
            node=node,
            role=role,
            started_at=started_at,
            endpoint=result.endpoint if result else None,
            model=result.model if result else model,
            sampling=params.model_dump(exclude_defaults=False),
            messages=messages,
            choices=choices,
            prompt_token_ids=result.prompt_token_ids if result else None,
            prompt_tokens=result.usage.prompt_tokens if result else 0,
            completion_tokens=result.usage.completion_tokens if result else 0,
            latency_s=result.latency_s if result else time.time() - started_at,
            error=error,
        )
        self.last_step[(episode_id, node)] = step_id
        if result:
            self.stats.completion_tokens += result.usage.completion_tokens
        return RoleCall(role=role, node=node, result=result, parsed=parsed, errors=errors, error=error)

    async def call_env(
        self,
        name: str,
        *,
        node: str,
        episode_id: str,
        request: dict[str, Any],
        fn: Callable[[], Awaitable[T]],
    ) -> T:
        attempt = self._attempt(episode_id)
        started_at = time.time()
        try:
            value = await fn()
        except Exception as exc:
            self.store.record_step(
                episode_id=episode_id,
                attempt=attempt,
                kind="env",
                node=node,
                role=name,
                started_at=started_at,
                latency_s=time.time() - started_at,
                error=f"{type(exc).__name__}: {exc}",
                request=_jsonable(request),
            )
            raise
        step_id = self.store.record_step(
            episode_id=episode_id,
            attempt=attempt,
            kind="env",
            node=node,
            role=name,
            started_at=started_at,
            latency_s=time.time() - started_at,
            request=_jsonable(request),
            response=_jsonable(value),
        )
        self.last_step[(episode_id, node)] = step_id
        return value

    def reward(self, episode_id: str, node: str, rewards: dict[str, float] | list[dict[str, float]]) -> None:
        """Attach rewards (one dict for all choices, or one per choice) to the node's last recorded step."""
        step_id = self.last_step.get((episode_id, node))
        if step_id is None:
            raise RolegraphError(f"episode {episode_id}: node '{node}' has recorded no step to reward")
        self.store.add_rewards(step_id, rewards)


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
            elapsed_s=elapsed_s,
            tokens_per_s=tokens_per_s,
        )

    def render(self, console: Console) -> None:
        head = (
            f"[bold]{self.graph}[/] in {self.run_dir}: {self.finished}/{self.episodes} episodes finished, "
            f"[green]{self.kept} kept[/], [yellow]{self.rejected} rejected[/]"
            + (f", [red]{self.failed} failed[/]" if self.failed else "")
            + (f", {self.running} unfinished" if self.running else "")
            + f"; acceptance {self.acceptance_rate:.0%}"
        )
        if self.elapsed_s:
            head += f"; {self.elapsed_s:.1f} s, {self.tokens_per_s:.1f} tok/s"
        console.print(head)
        usage = Table(title="tokens per role", title_justify="left")
        for column in ("role", "calls", "prompt tokens", "completion tokens"):
            usage.add_column(column, justify="left" if column == "role" else "right")
        for role, u in self.usage.items():
            usage.add_row(role, str(u["calls"]), str(u["prompt_tokens"]), str(u["completion_tokens"]))
        console.print(usage)
        if self.reasons:
            reasons = Table(title="rejection reasons", title_justify="left")
            reasons.add_column("reason")
            reasons.add_column("episodes", justify="right")
            for reason, count in self.reasons.items():
                reasons.add_row(reason, str(count))
            console.print(reasons)
        console.print(f"data: {self.run_dir / 'store.sqlite'}")
        console.print(
            f"export: rolegraph export {self.run_dir} --format sft --out {self.run_dir / 'sft.jsonl'}"
        )


# --- running ----------------------------------------------------------------------------------------------
def _checkpoint_ts(created_at: str | None) -> float | None:
    return datetime.fromisoformat(created_at).timestamp() if created_at else None


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
        self.reasons: Counter[str] = Counter()

    async def _endpoint_failure(self, key: str) -> None:
        """Retry later: judging an episode whose calls never reached a model would be a false rejection."""
        await self.compiled.checkpointer.adelete_thread(key)
        self.store.fail_episode(key, f"endpoint error: {self.ctx.endpoint_errors[key]}")
        self.ctx.stats.failed += 1
        self.endpoint_failures += 1
        if (
            self.endpoint_failures >= ABORT_AFTER_ENDPOINT_FAILURES
            and self.ctx.stats.kept + self.ctx.stats.rejected == 0
        ):
            raise EndpointError(
                f"{self.endpoint_failures} episodes failed on endpoint errors: "
                f"{self.ctx.endpoint_errors[key]}",
                "check the endpoints with `rolegraph serve status`; re-run the same --run-dir to resume",
            )

    async def episode(self, item: EpisodeInput) -> None:
        key = item.key
        attempt = self.store.begin_episode(key, item.state)
        self.ctx.attempts[key] = attempt
        self.ctx.endpoint_errors.pop(key, None)
        config: dict[str, Any] = {"configurable": {"thread_id": key}, "recursion_limit": self.recursion_limit}
        try:
            snapshot = await self.compiled.aget_state(config)
            if attempt > 1 and snapshot.values:
                self.store.supersede_interrupted(key, attempt, _checkpoint_ts(snapshot.created_at))
                final = await self.compiled.ainvoke(None, config) if snapshot.next else snapshot.values
            else:
                if attempt > 1:
                    self.store.supersede_interrupted(key, attempt, None)
                final = await self.compiled.ainvoke({**item.state, "episode_id": key}, config)
        except (ModelNotFoundError, asyncio.CancelledError):
            raise
        except Exception as exc:
            if key in self.ctx.endpoint_errors:  # the node failed because a call never reached a model
                await self._endpoint_failure(key)
                return
            message = exc.message if isinstance(exc, RolegraphError) else f"{type(exc).__name__}: {exc}"
            self.store.fail_episode(key, message)
            self.ctx.stats.failed += 1
            return
        if key in self.ctx.endpoint_errors:
            await self._endpoint_failure(key)
            return
        result: Outcome = self.graph.outcome(dict(final))
        self.store.finish_episode(
            key, dict(final), kept=result.kept, reason=result.reason, rewards=dict(result.rewards)
        )
        if result.kept:
            self.ctx.stats.kept += 1
        else:
            self.ctx.stats.rejected += 1


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
) -> RunSummary:
    """Run (or resume) `params.n` episodes of `graph` into `run_dir` and return the summary.

    `config_or_pool` is a config (the endpoints are launched or attached for the run and released after) or an
    already open pool, e.g. `rolegraph.serving.EndpointPool` (or a fake with `resolve(role)` in unit tests).
    """
    if concurrency < 1:
        raise RolegraphError(
            f"concurrency must be at least 1, got {concurrency}", "pass --concurrency 1 or more"
        )
    run_dir = Path(run_dir)
    console = console or Console(stderr=True)
    params = dataclasses.replace(params, run_dir=run_dir)
    config = config_or_pool if isinstance(config_or_pool, RolegraphConfig) else None
    if config is not None:
        config = bind_missing_roles(config, graph.roles)
    started = time.monotonic()
    store = Store(run_dir)
    try:
        store.start_run(
            graph.name,
            config.model_dump(mode="json") if config is not None else {},
            params.seed,
            {"n": params.n, "options": params.options, "concurrency": concurrency},
        )
        async with AsyncExitStack() as stack:
            if config is not None:
                from rolegraph.serving import EndpointPool

                pool: RolePool = await stack.enter_async_context(EndpointPool(config))
            else:
                pool = config_or_pool  # type: ignore[assignment]
            stats = RunStats()
            ctx = RuntimeContext(
                pool, store, roles=getattr(graph, "role_defs", None), prompts_dir=prompts_dir, stats=stats
            )
            params = await _prepare(graph, ctx, params, run_dir)
            inputs = graph.inputs(params)
            _check_unique(inputs, graph.name)
            finished = store.finished_ids()
            todo = [item for item in inputs if item.key not in finished]
            stats.skipped = len(inputs) - len(todo)
            saver = await stack.enter_async_context(
                AsyncSqliteSaver.from_conn_string(str(run_dir / CHECKPOINT_FILE))
            )
            compiled = graph.build(ctx).compile(checkpointer=saver)
            spec = getattr(graph, "spec", None)
            limit = 25
            if spec is not None:
                from rolegraph.graphs.spec import recursion_limit

                limit = recursion_limit(spec)
            runner = _Runner(graph, ctx, compiled, store, max(limit, 50))
            await _run_all(runner, todo, len(inputs), stats, concurrency, console, progress)
        return RunSummary.from_store(
            store, elapsed_s=time.monotonic() - started, tokens_per_s=stats.tokens_per_s
        )
    finally:
        store.close()


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
    task = bar.add_task(runner.graph.name, total=total, completed=stats.skipped, **_fields(stats))

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
