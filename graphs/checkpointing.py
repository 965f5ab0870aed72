"""The runtime's LangGraph checkpointer on one machine: it commits the steps a node queued
(`Store.record_step_soon`) before it saves the node's writes, so a task that resumes as done has its steps."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Any

from langchain_core.runnables import RunnableConfig
from langgraph.checkpoint.base import BaseCheckpointSaver, ChannelVersions, Checkpoint, CheckpointMetadata
from langgraph.checkpoint.sqlite.aio import AsyncSqliteSaver

BeforeWrite = Callable[[], Awaitable[None]]


class StepsFirst(BaseCheckpointSaver[str]):
    """Mixin (list it first) for a checkpointer: awaits `before_write` (a store's `aflush`) before writing."""

    before_write: BeforeWrite | None = None

    async def aput(
        self,
        config: RunnableConfig,
        checkpoint: Checkpoint,
        metadata: CheckpointMetadata,
        new_versions: ChannelVersions,
    ) -> RunnableConfig:
        if self.before_write is not None:
            await self.before_write()
        return await super().aput(config, checkpoint, metadata, new_versions)

    async def aput_writes(
        self, config: RunnableConfig, writes: Sequence[tuple[str, Any]], task_id: str, task_path: str = ""
    ) -> None:
        if self.before_write is not None:
            await self.before_write()
        await super().aput_writes(config, writes, task_id, task_path)


class StepsFirstSaver(StepsFirst, AsyncSqliteSaver):
    """The run's checkpoints file (AsyncSqliteSaver), steps first."""


@asynccontextmanager
async def steps_first_saver(path: str, before_write: BeforeWrite) -> AsyncIterator[StepsFirstSaver]:
    """The checkpoints file at `path`, opened as a StepsFirstSaver that awaits `before_write` first."""
    async with StepsFirstSaver.from_conn_string(path) as saver:
        assert isinstance(saver, StepsFirstSaver)
        saver.before_write = before_write
        yield saver
