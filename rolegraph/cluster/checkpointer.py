"""A LangGraph checkpointer whose checkpoints live in the store-writer actor (in the run directory's
checkpoints file, on the driver's node), so a worker on any node resumes an episode from its last node."""

from __future__ import annotations

import random
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any

from langchain_core.runnables import RunnableConfig
from langgraph.checkpoint.base import (
    BaseCheckpointSaver,
    ChannelVersions,
    Checkpoint,
    CheckpointMetadata,
    CheckpointTuple,
)

from rolegraph.graphs.checkpointing import BeforeWrite, StepsFirst


def addressing(config: RunnableConfig | None) -> RunnableConfig | None:
    """What of a run config names a checkpoint (thread, namespace, id). LangGraph's own `__pregel_*` entries
    (the runtime, its context, the stream writer) stay behind: shipping them costs a pickle per call, and the
    writer's first unpickle imported the whole runtime (~0.5 s inside the first episode)."""
    if config is None:
        return None
    configurable = config.get("configurable", {})
    return {"configurable": {k: v for k, v in configurable.items() if not k.startswith("__")}}


class WriterCheckpointer(BaseCheckpointSaver[str]):
    """Forwards every checkpoint read and write to the writer actor (an AsyncSqliteSaver there); async only,
    as the runtime uses it."""

    def __init__(self, writer: Any) -> None:
        super().__init__()
        self.writer = writer

    async def aget_tuple(self, config: RunnableConfig) -> CheckpointTuple | None:
        found: CheckpointTuple | None = await self.writer.aget_tuple.remote(addressing(config))
        return found

    async def alist(
        self,
        config: RunnableConfig | None,
        *,
        filter: dict[str, Any] | None = None,
        before: RunnableConfig | None = None,
        limit: int | None = None,
    ) -> AsyncIterator[CheckpointTuple]:
        for item in await self.writer.alist.remote(addressing(config), filter, addressing(before), limit):
            yield item

    async def aput(
        self,
        config: RunnableConfig,
        checkpoint: Checkpoint,
        metadata: CheckpointMetadata,
        new_versions: ChannelVersions,
    ) -> RunnableConfig:
        saved: RunnableConfig = await self.writer.aput.remote(
            addressing(config), checkpoint, metadata, new_versions
        )
        return saved

    async def aput_writes(
        self, config: RunnableConfig, writes: Sequence[tuple[str, Any]], task_id: str, task_path: str = ""
    ) -> None:
        await self.writer.aput_writes.remote(addressing(config), list(writes), task_id, task_path)

    async def adelete_thread(self, thread_id: str) -> None:
        await self.writer.adelete_thread.remote(thread_id)

    async def aget_delta_channel_history(
        self, *, config: RunnableConfig, channels: Sequence[str]
    ) -> Mapping[str, Any]:
        history: Mapping[str, Any] = await self.writer.aget_delta_channel_history.remote(
            addressing(config), list(channels)
        )
        return history

    def get_next_version(self, current: str | None, channel: None) -> str:
        """As AsyncSqliteSaver numbers versions, so checkpoints written here and there compare alike."""
        if current is None:
            current_v = 0
        elif isinstance(current, int):
            current_v = current
        else:
            current_v = int(current.split(".")[0])
        return f"{current_v + 1:032}.{random.random():016}"


class RemoteCheckpointer(StepsFirst, WriterCheckpointer):
    """The worker's checkpointer: the writer actor's, committing the worker's queued steps first."""

    def __init__(self, writer: Any, before_write: BeforeWrite | None = None) -> None:
        super().__init__(writer)
        self.before_write = before_write
