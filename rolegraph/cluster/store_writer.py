"""The run's one writer on a cluster: an actor on the driver's node that owns the run's Store and checkpoints
file, and `RemoteStore`, the proxy workers (and the driver) write and read through.

Every write is committed by the actor before the caller goes on, as on one machine, so a worker dying at any
moment leaves only complete rows; the runtime supersedes an interrupted attempt's steps on resume. A write
from an attempt the run has since restarted elsewhere (a worker declared dead that still talks) is dropped,
so nothing is recorded twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import Callable, Sequence
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any, cast

from rolegraph.store import Step, Store
from rolegraph.store.check import CHECKPOINT_FILE
from rolegraph.store.db import step_row

READ_METHODS = frozenset(
    {
        "run",
        "finished_ids",
        "episodes",
        "episode",
        "steps",
        "usage_by_role",
        "counts",
        "failures_by_kind",
        "missing_rewards",
        "rejection_reasons",
        "training_runs",
        "integrity_check",
    }
)
"""Store methods forwarded as they are (reads, and writes that carry no episode attempt)."""
PLAIN_WRITES = frozenset({"start_run", "add_rewards", "record_training"})


class StoreWriter:
    """The actor (see `start_writer`): the run's Store and LangGraph checkpointer, in one process."""

    def __init__(self, run_dir: str) -> None:
        self.store = Store(run_dir)
        self.attempts: dict[str, int] = {}
        """Episode id → its current attempt, as this writer began it."""
        self._stack = AsyncExitStack()
        self._saver: Any = None

    async def saver(self) -> Any:
        if self._saver is None:
            from langgraph.checkpoint.sqlite.aio import AsyncSqliteSaver

            path = str(self.store.run_dir / CHECKPOINT_FILE)
            self._saver = await self._stack.enter_async_context(AsyncSqliteSaver.from_conn_string(path))
        return self._saver

    async def ready(self) -> str:
        await self.saver()
        return str(self.store.run_dir)

    async def close(self) -> None:
        await self._stack.aclose()
        self._saver = None
        self.store.close()

    # --- the store ------------------------------------------------------------------------------------
    def call(self, method: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        if method not in READ_METHODS | PLAIN_WRITES:
            raise AttributeError(f"the store writer does not forward {method}")
        return getattr(self.store, method)(*args, **kwargs)

    def _stale(self, episode_id: str, attempt: int | None) -> bool:
        current = self.attempts.get(episode_id)
        return attempt is not None and current is not None and attempt < current

    def begin_episode(self, episode_id: str, input_state: dict[str, Any]) -> int:
        attempt = self.store.begin_episode(episode_id, input_state)
        self.attempts[episode_id] = attempt
        return attempt

    def finish_episode(self, episode_id: str, attempt: int | None, *args: Any, **kwargs: Any) -> bool:
        if self._stale(episode_id, attempt):
            return False
        self.store.finish_episode(episode_id, *args, **kwargs)
        return True

    def fail_episode(self, episode_id: str, attempt: int | None, *args: Any, **kwargs: Any) -> bool:
        if self._stale(episode_id, attempt):
            return False
        self.store.fail_episode(episode_id, *args, **kwargs)
        return True

    def supersede_interrupted(self, episode_id: str, attempt: int, completed: set[str] | None) -> int:
        if self._stale(episode_id, attempt):
            return 0
        return self.store.supersede_interrupted(episode_id, attempt, completed)

    def record_rows(self, rows: Sequence[tuple[Any, ...]]) -> list[int]:
        """Insert step rows (`step_row`'s) in one transaction; a stale attempt's rows are dropped (id 0)."""
        stale = [self._stale(row[0], row[1]) for row in rows]
        ids = iter(self.store.record_rows([row for row, old in zip(rows, stale, strict=True) if not old]))
        return [0 if old else next(ids) for old in stale]

    def statuses(self, episode_ids: Sequence[str]) -> dict[str, str]:
        """Episode id → 'kept', 'finished' (rejected), 'failed' or 'running'; unknown ids are left out."""
        found: dict[str, str] = {}
        for key in episode_ids:
            record = self.store.episode(key)
            if record is not None:
                found[key] = "kept" if record.status == "finished" and record.kept else record.status
        return found

    # --- the checkpointer -----------------------------------------------------------------------------
    async def aget_tuple(self, config: dict[str, Any]) -> Any:
        return await (await self.saver()).aget_tuple(config)

    async def alist(self, config: Any, filter: Any, before: Any, limit: int | None) -> list[Any]:
        saver = await self.saver()
        return [t async for t in saver.alist(config, filter=filter, before=before, limit=limit)]

    async def aput(self, config: Any, checkpoint: Any, metadata: Any, new_versions: Any) -> Any:
        return await (await self.saver()).aput(config, checkpoint, metadata, new_versions)

    async def aput_writes(self, config: Any, writes: Any, task_id: str, task_path: str) -> None:
        await (await self.saver()).aput_writes(config, writes, task_id, task_path)

    async def adelete_thread(self, thread_id: str) -> None:
        await (await self.saver()).adelete_thread(thread_id)

    async def aget_delta_channel_history(self, config: Any, channels: Sequence[str]) -> Any:
        return await (await self.saver()).aget_delta_channel_history(config=config, channels=channels)


def start_writer(run_dir: Path, node_id: str) -> Any:
    """Start the writer actor on `node_id` (the driver's: the files never leave its disk) and wait for it."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    from rolegraph.cluster.connect import remote_error

    actor = ray.remote(StoreWriter).options(
        num_cpus=0,
        max_restarts=0,
        max_concurrency=1000,
        scheduling_strategy=NodeAffinitySchedulingStrategy(node_id, soft=False),
    )
    handle: Any = actor.remote(str(run_dir.resolve()))
    try:
        ray.get(handle.ready.remote())
    except Exception as exc:
        raise remote_error(exc) from None
    return handle


class RemoteStore:
    """A Store whose every call runs in the writer actor (use it where a `Store` is expected)."""

    def __init__(self, writer: Any, run_dir: Path) -> None:
        self.writer = writer
        self.run_dir = run_dir
        self.attempts: dict[str, int] = {}
        self._pending: list[tuple[tuple[Any, ...], asyncio.Future[int]]] = []
        self._flusher: asyncio.Task[None] | None = None
        self._soon: set[asyncio.Future[Step]] = set()
        self._soon_failure: BaseException | None = None

    def as_store(self) -> Store:
        return cast(Store, self)

    def _get(self, ref: Any) -> Any:
        import ray

        from rolegraph.cluster.connect import remote_error

        try:
            return ray.get(ref)
        except ray.exceptions.RayTaskError as exc:
            raise remote_error(exc) from None

    def __getattr__(self, method: str) -> Any:
        if method not in READ_METHODS | PLAIN_WRITES:
            raise AttributeError(method)

        def forward(*args: Any, **kwargs: Any) -> Any:
            return self._get(self.writer.call.remote(method, args, kwargs))

        return forward

    def begin_episode(self, episode_id: str, input_state: dict[str, Any]) -> int:
        attempt = int(self._get(self.writer.begin_episode.remote(episode_id, input_state)))
        self.attempts[episode_id] = attempt
        return attempt

    def finish_episode(self, episode_id: str, *args: Any, **kwargs: Any) -> None:
        attempt = self.attempts.get(episode_id)
        self._get(self.writer.finish_episode.remote(episode_id, attempt, *args, **kwargs))

    def fail_episode(self, episode_id: str, *args: Any, **kwargs: Any) -> None:
        attempt = self.attempts.get(episode_id)
        self._get(self.writer.fail_episode.remote(episode_id, attempt, *args, **kwargs))

    def supersede_interrupted(self, episode_id: str, attempt: int, completed: set[str] | None) -> int:
        return int(self._get(self.writer.supersede_interrupted.remote(episode_id, attempt, completed)))

    def record_step(self, step: Step) -> Step:
        (step_id,) = self._get(self.writer.record_rows.remote([step_row(step)]))
        return dataclasses.replace(step, id=step_id)

    async def arecord_step(self, step: Step) -> Step:
        """Record `step`, committed before this returns. Steps that other coroutines of this process record
        meanwhile go to the writer together, in one call and one transaction (group commit): the writer then
        pays its per-call cost once per batch, not once per step."""
        future: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._pending.append((step_row(step), future))
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush())
        return dataclasses.replace(step, id=await future)

    def record_step_soon(self, build: Callable[[], Step]) -> None:
        """`arecord_step(build())` without waiting for it (see Store.record_step_soon); `aflush` waits for
        it."""
        task = asyncio.ensure_future(self._arecord_built(build))
        self._soon.add(task)
        task.add_done_callback(self._settled)

    async def _arecord_built(self, build: Callable[[], Step]) -> Step:
        return await self.arecord_step(build())

    def _settled(self, task: asyncio.Future[Step]) -> None:
        self._soon.discard(task)
        if not task.cancelled() and task.exception() is not None and self._soon_failure is None:
            self._soon_failure = task.exception()

    async def aflush(self) -> None:
        """Wait until every step `record_step_soon` sent is committed; raises the first that failed."""
        while self._soon:
            await asyncio.gather(*self._soon, return_exceptions=True)
        failure, self._soon_failure = self._soon_failure, None
        if failure is not None:
            raise failure

    async def _flush(self) -> None:
        from rolegraph.cluster.connect import remote_error

        while self._pending:
            batch, self._pending = self._pending, []
            try:
                ids = await self.writer.record_rows.remote([row for row, _ in batch])
            except BaseException as exc:
                failure = remote_error(exc)
                for _, future in batch:
                    if not future.done():
                        future.set_exception(failure)
                if not isinstance(exc, Exception):
                    raise
                continue
            for (_, future), step_id in zip(batch, ids, strict=True):
                if not future.done():
                    future.set_result(step_id)

    def statuses(self, episode_ids: Sequence[str]) -> dict[str, str]:
        found: dict[str, str] = self._get(self.writer.statuses.remote(list(episode_ids)))
        return found

    def close(self) -> None:
        """Close the writer's files (the driver does this once, at the end of the run)."""
        with contextlib.suppress(Exception):
            self._get(self.writer.close.remote())
